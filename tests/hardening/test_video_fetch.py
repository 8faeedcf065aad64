"""Video URLs obey the image URL policy (the canary of test_url_policy is never reached, the key goes to Label
Studio alone), stream to the video cache once, and hold their own size cap and deadline, leaving no partial file.
Real loopback servers throughout: test_url_policy's "Label Studio", canary and slow servers, and one serving videos.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest

from active_learning.images import ImageError, ImageFetcher
from active_learning.settings import Settings
from active_learning.video.cache import VideoCache
from tests.hardening.test_url_policy import (  # noqa: F401 - fixtures
    API_KEY, PNG, Recorder, SlowServer, _canary_untouched, canary, ls_server, settings,
)
from tests.support.net import http_server

VIDEO_BYTES = 300_000  # more than max_image_bytes (200 000) of these settings: videos have their own cap
BIG_BYTES = 32 * 1024 * 1024
CHUNK = b"v" * 10_000


class _VideoHandler(BaseHTTPRequestHandler):
    """``/declared.mp4``: VIDEO_BYTES with Content-Length; ``/chunked.mp4``: the same, chunked (no length);
    ``/big.mp4``: BIG_BYTES with Content-Length; ``/endless.mp4``: chunks until the client hangs up (bytes sent
    noted in ``endless_sent``); ``/slow.mp4``: a chunked byte every 0.2 s; anything else: 404."""

    protocol_version = "HTTP/1.1"
    endless_sent = 0
    endless_done = threading.Event()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a cap or a deadline): expected
        finally:
            if self.path == "/endless.mp4":
                type(self).endless_done.set()

    def _answer(self) -> None:
        declared = {"/declared.mp4": VIDEO_BYTES, "/big.mp4": BIG_BYTES}.get(self.path)
        if declared is None and self.path not in ("/chunked.mp4", "/endless.mp4", "/slow.mp4"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if declared is not None:
            self.send_header("Content-Length", str(declared))
            self.end_headers()
            for start in range(0, declared, len(CHUNK)):
                self.wfile.write(CHUNK[: declared - start])
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.path == "/slow.mp4":
            for _ in range(100):
                self.wfile.write(b"1\r\nv\r\n")
                self.wfile.flush()
                time.sleep(0.2)
        elif self.path == "/endless.mp4":
            for _ in range(100_000):  # 1 GB at most: bounded, but far past any cap here
                self.wfile.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                type(self).endless_sent += len(CHUNK)
        else:
            for _ in range(VIDEO_BYTES // len(CHUNK)):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def video_host() -> Iterator[str]:
    with http_server(_VideoHandler) as url:
        yield url


@pytest.fixture
def allowed(settings: Settings, video_host: str) -> Settings:
    """The test settings with the video server allowed (named exactly, so its loopback address is fine)."""
    return replace(settings, allowed_image_hosts=(video_host.removeprefix("http://"),))


def _files(cache: VideoCache) -> list[Path]:
    return sorted(cache.root.iterdir()) if cache.root.exists() else []


def test_a_label_studio_video_is_streamed_to_the_cache_once(settings, ls_server):
    cache = VideoCache(settings)
    path = cache.path("/data/upload/3/clip.MP4")
    assert path.read_bytes() == PNG and path.suffix == ".mp4" and path.parent == settings.video_cache_dir
    assert ls_server.requests[-1] == ("/data/upload/3/clip.MP4", f"Token {API_KEY}")
    asked = len(ls_server.requests)
    assert cache.path("/data/upload/3/clip.MP4") == path and len(ls_server.requests) == asked  # from disk
    assert VideoCache(settings).path("/data/upload/3/clip.MP4") == path and len(ls_server.requests) == asked
    assert _files(cache) == [path]
    assert VideoCache(settings).path("/data/local-files/?d=videos/a.webm").suffix == ".webm"
    assert VideoCache(settings).path("/data/upload/3/no-extension").suffix == ""


def test_videos_have_their_own_size_cap_whether_declared_or_not(allowed, video_host):
    big_enough = VideoCache(replace(allowed, max_video_bytes=VIDEO_BYTES))
    for name in ("declared", "chunked"):
        assert big_enough.path(f"{video_host}/{name}.mp4").read_bytes() == b"v" * VIDEO_BYTES

    capped = VideoCache(replace(allowed, max_video_bytes=VIDEO_BYTES - 1, data_dir=allowed.data_dir / "capped"))
    with pytest.raises(ImageError, match=r"^video .* is 300000 bytes, more than the 299999-byte limit"):
        capped.path(f"{video_host}/declared.mp4")
    with pytest.raises(ImageError, match=r"^video .* is more than the 299999-byte limit"):
        capped.path(f"{video_host}/chunked.mp4")
    assert _files(capped) == []  # no partial file left


def test_an_endless_video_is_cut_off_at_the_cap(allowed, video_host):
    """The cap is counted as bytes arrive: the download stops there, it does not wait for the body to end."""
    _VideoHandler.endless_sent = 0
    _VideoHandler.endless_done.clear()
    cache = VideoCache(replace(allowed, max_video_bytes=1_000_000))
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"^video .* is more than the 1000000-byte limit"):
        cache.path(f"{video_host}/endless.mp4")
    assert time.monotonic() - started < 5
    assert _files(cache) == []
    assert _VideoHandler.endless_done.wait(10)  # the server noticed the hang-up...
    assert _VideoHandler.endless_sent < 100_000 * len(CHUNK) // 10  # ...long before the end of its gigabyte


def test_a_video_is_never_held_in_memory(allowed, video_host, tmp_path):
    fetcher = ImageFetcher(allowed)
    tracemalloc.start()
    try:
        written = fetcher.download_to(f"{video_host}/big.mp4", tmp_path / "big.mp4", BIG_BYTES, 30.0, "video")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written == BIG_BYTES == (tmp_path / "big.mp4").stat().st_size
    assert peak < BIG_BYTES // 8, f"peak {peak} bytes of Python memory for a {BIG_BYTES}-byte video"


def test_concurrent_callers_share_one_complete_file(allowed, video_host):
    cache = VideoCache(allowed)
    url = f"{video_host}/declared.mp4"
    paths: list[Path] = []
    errors: list[Exception] = []

    def fetch() -> None:
        try:
            paths.append(cache.path(url))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(paths) == 4 and len(set(paths)) == 1
    assert paths[0].read_bytes() == b"v" * VIDEO_BYTES
    assert _files(cache) == [paths[0]]  # no temporary file left behind by any of them


def test_a_failed_video_download_says_video_and_leaves_nothing(allowed, video_host):
    cache = VideoCache(allowed)
    with pytest.raises(ImageError, match=r"^video .*/missing\.mp4': HTTP 404$"):
        cache.path(f"{video_host}/missing.mp4")
    with pytest.raises(ImageError, match=r"^video URL is empty$"):
        cache.path("")
    assert _files(cache) == []


@pytest.mark.parametrize(("mode", "message"), [("chunked drip", "download took more than 1 s"),
                                               ("drip", "download took more than 1 s"),
                                               ("stall", "no answer within 1 s")])
def test_a_slow_video_cannot_outlast_its_deadline(settings, video_host, mode, message):
    server = SlowServer(mode) if mode != "chunked drip" else None
    base = server.url if server else video_host
    try:
        cache = VideoCache(replace(settings, allowed_image_hosts=(base.removeprefix("http://"),), video_timeout=1.0))
        started = time.monotonic()
        with pytest.raises(ImageError, match=f"^video .*{message}"):
            cache.path(f"{base}/slow.mp4")
        assert time.monotonic() - started < 2.5
        assert _files(cache) == []
    finally:
        if server:
            server.close()


def test_video_urls_to_other_hosts_are_refused(settings, ls_server, canary):
    """The canary is on loopback and not allowed: refused before any connection (``_canary_untouched``), also when
    Label Studio redirects there, also spelled as localhost, also when a pattern allows every host."""
    for configured in (settings, replace(settings, allowed_image_hosts=("*",))):
        cache = VideoCache(configured)
        for url in (f"{canary.url}/clip.mp4", f"http://localhost:{canary.port}/clip.mp4",
                    "/redirect?to=" + quote(f"{canary.url}/clip.mp4", safe="")):
            with pytest.raises(ImageError, match="not allowed|non-public"):
                cache.path(url)
        assert _files(cache) == []


def test_an_allowed_other_host_gets_the_video_but_never_the_key(settings, ls_server):
    other = Recorder(wants_token=False)
    try:
        cache = VideoCache(replace(settings, allowed_image_hosts=(f"127.0.0.1:{other.port}",)))
        hop = "/redirect?to=" + quote(f"{other.url}/hop.mp4", safe="")
        assert cache.path(hop).read_bytes() == PNG  # Label Studio sends us there
        assert cache.path(f"{other.url}/direct.mp4").read_bytes() == PNG
        assert ls_server.requests[-1] == (hop, f"Token {API_KEY}")
        assert other.requests == [("/hop.mp4", None), ("/direct.mp4", None)]
    finally:
        other.shutdown()
