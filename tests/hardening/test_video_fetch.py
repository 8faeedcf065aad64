"""Video URLs obey the image URL policy (the canary of test_url_policy is never reached, the key goes to Label
Studio alone), stream to the video cache once, and hold their own size cap and deadline, leaving no partial file."""

from __future__ import annotations

import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import quote

import pytest

from active_learning.images import ImageError
from active_learning.video.cache import VideoCache
from tests.hardening.test_url_policy import API_KEY, PNG, _canary_untouched, canary, ls_server, settings  # noqa: F401
from tests.support.net import http_server

VIDEO_BYTES = 300_000  # more than max_image_bytes (200 000) of these settings: videos have their own cap


class _VideoHandler(BaseHTTPRequestHandler):
    """``/declared.mp4``: VIDEO_BYTES with Content-Length; ``/chunked.mp4``: the same, chunked (no length);
    ``/slow.mp4``: a byte every 0.2 s."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        if self.path == "/declared.mp4":
            self.send_header("Content-Length", str(VIDEO_BYTES))
            self.end_headers()
            self.wfile.write(b"v" * VIDEO_BYTES)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.path == "/slow.mp4":
            for _ in range(100):
                self.wfile.write(b"1\r\nv\r\n")
                self.wfile.flush()
                time.sleep(0.2)
        else:
            for _ in range(VIDEO_BYTES // 10_000):
                self.wfile.write(b"%x\r\n%s\r\n" % (10_000, b"v" * 10_000))
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def video_host():
    with http_server(_VideoHandler) as url:
        yield url


def _files(cache: VideoCache) -> list[Path]:
    return sorted(cache.root.iterdir()) if cache.root.exists() else []


def test_a_label_studio_video_is_streamed_to_the_cache_once(settings, ls_server):
    cache = VideoCache(settings)
    path = cache.path("/data/upload/3/clip.MP4")
    assert path.read_bytes() == PNG and path.suffix == ".mp4" and path.parent == settings.video_cache_dir
    assert ls_server.requests[-1] == ("/data/upload/3/clip.MP4", f"Token {API_KEY}")
    asked = len(ls_server.requests)
    assert cache.path("/data/upload/3/clip.MP4") == path and len(ls_server.requests) == asked  # from disk
    assert _files(cache) == [path]


def test_videos_have_their_own_size_cap_whether_declared_or_not(settings, video_host):
    host = video_host.split("//", 1)[1]
    allowed = replace(settings, allowed_image_hosts=(host,))
    big_enough = VideoCache(replace(allowed, max_video_bytes=VIDEO_BYTES))
    for name in ("declared", "chunked"):
        assert big_enough.path(f"{video_host}/{name}.mp4").stat().st_size == VIDEO_BYTES

    capped = VideoCache(replace(allowed, max_video_bytes=VIDEO_BYTES - 1, data_dir=settings.data_dir / "capped"))
    with pytest.raises(ImageError, match=r"^video .* is 300000 bytes, more than the 299999-byte limit"):
        capped.path(f"{video_host}/declared.mp4")
    with pytest.raises(ImageError, match=r"^video .* is more than the 299999-byte limit"):
        capped.path(f"{video_host}/chunked.mp4")
    assert _files(capped) == []  # no partial file left


def test_a_slow_video_cannot_outlast_its_deadline(settings, video_host):
    host = video_host.split("//", 1)[1]
    cache = VideoCache(replace(settings, allowed_image_hosts=(host,), video_timeout=1.0))
    started = time.monotonic()
    with pytest.raises(ImageError, match="video .* took more than 1 s|no answer within 1 s"):
        cache.path(f"{video_host}/slow.mp4")
    assert time.monotonic() - started < 3
    assert _files(cache) == []


def test_video_urls_to_other_hosts_are_refused_and_get_no_key(settings, ls_server, canary):
    cache = VideoCache(settings)
    for url in (f"{canary.url}/clip.mp4", f"http://localhost:{canary.port}/clip.mp4",
                "/redirect?to=" + quote(f"{canary.url}/clip.mp4", safe="")):
        with pytest.raises(ImageError, match="not allowed|non-public"):
            cache.path(url)
    assert _files(cache) == []
    # an allowed other host gets the video, but never the key (also not on a redirect from Label Studio to it)
    allowed = VideoCache(replace(settings, allowed_image_hosts=(f"127.0.0.1:{canary.port}",),
                                 data_dir=settings.data_dir / "allowed"))
    assert allowed.path("/redirect?to=" + quote(f"{canary.url}/clip.mp4", safe="")).read_bytes() == PNG
    assert canary.requests == [("/clip.mp4", None)]
    canary.requests.clear()
    canary.connections = 0  # reached on purpose: the module's canary check is for the refused URLs
