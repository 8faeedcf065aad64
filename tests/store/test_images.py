"""The image fetcher's safety rules and the content-addressed cache, against a local HTTP server."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from active_learning.images import ImageCache, ImageError, ImageFetcher, cache_labeled_images, cache_task_image
from active_learning.settings import Settings

API_KEY = "0123456789abcdef0123456789abcdef01234567"  # a legacy key: 40 hex characters


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


def _rotated_jpeg() -> bytes:
    """40 x 20 pixels stored, EXIF orientation 6: shown (and trained on) as 20 x 40."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.new("RGB", (40, 20), "red").save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


class Server:
    """A tiny HTTP server: ``routes`` maps a path to a handler; requests are counted and their headers kept."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.auth_seen: dict[str, str | None] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                server.auth_seen[self.path] = self.headers.get("Authorization")
                server.route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.other: Server | None = None
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def route(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        if path == "/img.png":
            self.send(h, _png((32, 24)))
        elif path == "/rotated.jpg":
            self.send(h, _rotated_jpeg())
        elif path.startswith("/data/"):
            if h.headers.get("Authorization") != f"Token {API_KEY}":
                self.send(h, b"unauthorized", status=401)
            else:
                self.send(h, _png((16, 16)))
        elif path == "/big":
            self.send(h, b"\0" * 300_000)
        elif path == "/big-undeclared":
            h.send_response(200)
            h.end_headers()
            for _ in range(30):
                h.wfile.write(b"\0" * 10_000)
        elif path == "/bomb.png":
            self.send(h, _png((5000, 5000), mode="1"))
        elif path == "/stall":
            time.sleep(1.5)
            self.send(h, _png((8, 8)))
        elif path == "/drip":
            h.send_response(200)
            h.send_header("Content-Length", "100")
            h.end_headers()
            for _ in range(100):
                h.wfile.write(b"\0")
                h.wfile.flush()
                time.sleep(0.02)
        elif path.startswith("/redirect"):
            target = h.path.split("to=", 1)[1]
            h.send_response(302)
            h.send_header("Location", target)
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            self.send(h, b"not found", status=404)

    @staticmethod
    def send(h: BaseHTTPRequestHandler, body: bytes, status: int = 200) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


@pytest.fixture(scope="module")
def media_server() -> Iterator[Server]:
    """Stands in for Label Studio's media endpoints (``/data/...`` needs the legacy token) and other hosts."""
    server = Server()
    yield server
    server.httpd.shutdown()


@pytest.fixture
def settings(media_server: Server, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, label_studio_url=media_server.url, label_studio_api_key=API_KEY,
                    max_image_bytes=200_000, max_image_pixels=1_000_000, image_timeout=1.0)


def test_relative_url_is_fetched_from_label_studio_with_the_token(settings: Settings, media_server: Server) -> None:
    fetched = ImageFetcher(settings).fetch("/data/upload/1/abc-img.png")

    assert (fetched.width, fetched.height, fetched.image.mode) == (16, 16, "RGB")
    assert len(fetched.sha256) == 64 and fetched.url == "/data/upload/1/abc-img.png"
    assert media_server.auth_seen["/data/upload/1/abc-img.png"] == f"Token {API_KEY}"


def test_local_files_url_keeps_its_query(settings: Settings, media_server: Server) -> None:
    assert ImageFetcher(settings).fetch("/data/local-files/?d=sub/a.png").width == 16
    assert media_server.hits["/data/local-files/?d=sub/a.png"] >= 1


def test_exif_orientation_is_applied(settings: Settings, media_server: Server) -> None:
    fetched = ImageFetcher(settings).fetch(media_server.url + "/rotated.jpg")
    assert (fetched.width, fetched.height) == (20, 40)


@pytest.mark.parametrize("path", ["/big", "/big-undeclared"])
def test_byte_cap(settings: Settings, media_server: Server, path: str) -> None:
    with pytest.raises(ImageError, match="200000-byte limit"):
        ImageFetcher(settings).fetch(media_server.url + path)


def test_pixel_cap_is_checked_before_decoding(settings: Settings, media_server: Server) -> None:
    with pytest.raises(ImageError, match="5000x5000 pixels"):
        ImageFetcher(settings).fetch(media_server.url + "/bomb.png")


@pytest.mark.parametrize(("path", "message"), [("/stall", "no answer within 1 s"), ("/drip", "more than 1 s")])
def test_timeouts(settings: Settings, media_server: Server, path: str, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(ImageError, match=message):
        ImageFetcher(settings).fetch(media_server.url + path)
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize(
    ("url", "allowed", "message"),
    [
        ("file:///etc/passwd", (), "only http"),
        ("data:image/png;base64,iVBORw0KGgo=", (), "only http"),
        ("http://169.254.169.254/latest/meta-data/", (), "169.254.169.254 is not allowed"),
        ("http://169.254.169.254/latest/meta-data/", ("*",), "non-public address 169.254.169.254"),
        ("http://localhost:9/x.png", ("*",), "non-public address"),  # the name is resolved and checked
        ("http://images.example.com/x.png", (), "images.example.com is not allowed"),
        ("http://127.0.0.1:5432/", (), "127.0.0.1 is not allowed"),  # Label Studio's host, another port
    ],
)
def test_refused_before_connecting(settings: Settings, url: str, allowed: tuple[str, ...], message: str) -> None:
    with pytest.raises(ImageError, match=message):
        ImageFetcher(replace(settings, allowed_image_hosts=allowed)).fetch(url)


def test_redirect_to_a_disallowed_host_is_refused(settings: Settings, media_server: Server) -> None:
    fetcher = ImageFetcher(settings)
    for target in ("http://169.254.169.254/latest/meta-data/", "http://evil.example/x.png"):
        with pytest.raises(ImageError, match="not allowed"):
            fetcher.fetch(f"{media_server.url}/redirect?to={target}")
    assert fetcher.fetch(f"{media_server.url}/redirect?to=/img.png").width == 32


def test_the_api_key_goes_to_label_studio_only(settings: Settings, media_server: Server) -> None:
    other = Server()  # an allowed image host that is not Label Studio (same address, another port)
    try:
        fetcher = ImageFetcher(replace(settings, allowed_image_hosts=(other.url.removeprefix("http://"),)))
        fetcher.fetch(f"/redirect?to={other.url}/img.png")
        assert media_server.auth_seen["/redirect?to=" + other.url + "/img.png"] == f"Token {API_KEY}"
        assert other.auth_seen["/img.png"] is None
    finally:
        other.httpd.shutdown()


def test_http_error_is_one_line(settings: Settings, media_server: Server) -> None:
    with pytest.raises(ImageError, match=r"^image '/data/x.png': HTTP 401$"):
        ImageFetcher(replace(settings, label_studio_api_key="wrong")).fetch("/data/x.png")


def test_cache_hit_does_not_refetch(settings: Settings, media_server: Server) -> None:
    url = media_server.url + "/img.png?cache-test"
    first = ImageCache(settings).get(url)
    again = ImageCache(settings).get(url)  # a fresh instance, as in another process

    assert media_server.hits["/img.png?cache-test"] == 1
    assert again.sha256 == first.sha256 and again.image.size == (32, 24)
    path = ImageCache(settings).path_for(first.sha256)
    assert path.is_file() and path.is_relative_to(settings.image_cache_dir)


def test_task_image_is_cached_and_noted_on_the_task(settings: Settings, media_server: Server, sqlite_store,
                                                    webhook) -> None:
    sqlite_store.ingest(webhook("annotation_created"))  # task 1 shows /data/upload/1/4eeb0230-img1.png
    cache = ImageCache(settings)

    fetched = cache_task_image(sqlite_store, cache, 1)
    assert cache_labeled_images(sqlite_store, cache, 1) == []  # already cached: nothing fetched again

    task = sqlite_store.tasks.get(1)
    assert (task.image_sha256, task.width, task.height) == (fetched.sha256, 16, 16)
    assert media_server.hits["/data/upload/1/4eeb0230-img1.png"] == 1
