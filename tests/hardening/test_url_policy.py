"""The image fetcher's URL policy and deadline, against real loopback servers: a "Label Studio" that wants the
token and serves a PNG, and a CANARY on another port that records every connection and request. Whatever URL
an attacker writes into a task, the fetcher either refuses it with ImageError or fetches from Label Studio; the
canary is never reached and never sees the key; a slow or silent server cannot outlast ``image_timeout``.
"""

from __future__ import annotations

import io
import random
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

import pytest
from PIL import Image

from active_learning.images import ImageError, ImageFetcher
from active_learning.images.fetcher import short_url
from active_learning.settings import Settings

API_KEY = "0123456789abcdef0123456789abcdef01234567"


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (7, 5), "blue").save(out, "PNG")
    return out.getvalue()


PNG = _png()


class Recorder(ThreadingHTTPServer):
    """A loopback HTTP server that records every connection it accepts and every request's path and token.
    As Label Studio (``wants_token``), it serves PNG to requests with the token and redirects ``/redirect?to=``;
    otherwise it serves PNG to anyone."""

    daemon_threads = True

    def __init__(self, wants_token: bool) -> None:
        self.wants_token = wants_token
        self.connections = 0
        self.requests: list[tuple[str, str | None]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = self.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def verify_request(self, request, client_address) -> bool:
        self.connections += 1
        return True

    @property
    def tokens(self) -> list[str | None]:
        return [token for _, token in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        token = self.headers.get("Authorization")
        self.server.requests.append((self.path, token))
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", unquote(self.path.split("to=", 1)[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        ok = token == f"Token {API_KEY}" or not self.server.wants_token
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(PNG) if ok else 0))
        self.end_headers()
        if ok:
            self.wfile.write(PNG)


@pytest.fixture(scope="module")
def ls_server() -> Iterator[Recorder]:
    server = Recorder(wants_token=True)
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def canary() -> Iterator[Recorder]:
    """Must never be reached: every test in this module checks it at the end (``_canary_untouched``)."""
    server = Recorder(wants_token=False)
    yield server
    server.shutdown()


@pytest.fixture(autouse=True)
def _canary_untouched(canary: Recorder) -> Iterator[None]:
    yield
    assert canary.connections == 0 and canary.requests == []


@pytest.fixture
def settings(ls_server: Recorder, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, label_studio_url=ls_server.url, label_studio_api_key=API_KEY,
                    max_image_bytes=200_000, image_timeout=2.0)


# --- generated URLs ------------------------------------------------------------------------------------------

def _hosts(port: int) -> list[str]:
    """127.0.0.1:``port`` in many disguises, most of them spelling loopback some other way."""
    forms = ["127.0.0.1", "localhost", "LOCALHOST", "127.0.0.1.", "2130706433", "0x7f000001", "0177.0.0.1",
             "0177.0.0.01", "127.1", "127.0.1", "0x7f.1", "0x7f.0.0.1", "[::1]", "[::ffff:127.0.0.1]",
             "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]", "[::127.0.0.1]", "0.0.0.0", "0", "[::]",
             "%31%32%37.0.0.1", "127%2e0%2e0%2e1", "127\u30020\u30020\u30021", "\uff11\uff12\uff17.0.0.1",
             "127.0.0.1%00", "[::1%25lo]", "[::1", "::1"]
    ports = [f":{port}", f":0{port}", f":{port + 65536}", f":{port} ", ":", "", f":+{port}", f":{port}.0",
             f": {port}", f":0x{port:x}"]
    return [host + p for host in forms for p in ports]


def _locations(ls_port: int, canary_port: int) -> list[str]:
    """Redirect targets that lead to the canary; Label Studio sends them as ``Location``, unchanged."""
    ls, bird = f"127.0.0.1:{ls_port}", f"127.0.0.1:{canary_port}"
    return [f"http://{bird}/x", f"//{bird}/x", f"http://{ls}\\@{bird}/x", f"http://{bird}\\@{ls}/x",
            f"http:/\\{bird}/x", f"\\\\{bird}/x", f"http://[::ffff:127.0.0.1]:{canary_port}/x",
            f"http://localhost:{canary_port}/x", f"http://2130706433:{canary_port}/x", f"http://127.1:{canary_port}/x",
            f"http://{ls}@{bird}/x", f"http://{bird}#@{ls}/x", f"http://{bird}\r\n@{ls}/x", f"HTTP://{bird}/x",
            f"http://[::1]:{canary_port}/x", f"http://0.0.0.0:{canary_port}/x"]


def _generated_urls(ls_port: int, canary_port: int, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    ls, bird = f"127.0.0.1:{ls_port}", f"127.0.0.1:{canary_port}"
    schemes = ["http://", "https://", "HTTP://", "hTtP://", "http:/", "http:\\\\", "http:", "//", "ftp://",
               "file://", "gopher://", "javascript://", " http://", "http ://", "\thttp://", "h\ttp://"]
    disguises = [  # each points at the canary, dressed as Label Studio
        f"{ls}\\@{bird}", f"{bird}\\@{ls}", f"{ls}@{bird}", f"user:{API_KEY}@{bird}", f"{bird}#@{ls}",
        f"{bird}?@{ls}", f"{bird}%23@{ls}", f"{bird}%40{ls}", f"{ls}%2f@{bird}", f"{ls}:@{bird}",
        f"{bird}\\{ls}", f"{bird}/\\{ls}", f"{ls}@@{bird}", f"@{bird}", f"{ls}.{bird}", f"{bird}:{ls_port}",
        f"[::ffff:127.0.0.1]:{canary_port}", f"127.0.0.1:{canary_port - 65536 * -1}",
    ]
    hosts = _hosts(canary_port) + _hosts(ls_port) + disguises
    paths = ["/img.png", "/data/upload/1/x.png", "/x?y=1", "/%2e%2e/%2e%2e/etc/passwd", "", "/#frag",
             "/a/../b.png", "\\img.png", "/redirect?to=/img.png", "/redirect?to=%2Fimg.png"]
    paths += ["/redirect?to=" + quote(location, safe="") for location in _locations(ls_port, canary_port)]
    noise = ["\r\n", "\n", "\r", "\t", " ", "\x00", "\x0b", "\x7f", "\u200b", "\u00a0", "\u2028", "\\", "@",
             "%0d%0a", "%00", "#", "?"]
    urls = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:  # Label Studio's own URL, then (maybe) noise: must be fetched or refused
            url = f"http://{ls}" + rng.choice(paths)
        elif kind < 0.6:  # the canary dressed as Label Studio
            url = rng.choice(schemes[:4]) + rng.choice(disguises) + rng.choice(paths)
        else:
            url = rng.choice(schemes) + rng.choice(hosts) + rng.choice(paths)
        if rng.random() < 0.3:
            at = rng.randrange(len(url) + 1)
            url = url[:at] + rng.choice(noise) + url[at:]
        urls.append(url)
    return urls


@pytest.mark.parametrize(("allowed", "seed"), [((), 1), (("*",), 2), (("localhost", "*.invalid"), 3)])
def test_generated_urls_are_refused_or_fetched_from_label_studio(settings: Settings, ls_server: Recorder,
                                                                  canary: Recorder, allowed, seed) -> None:
    fetcher = ImageFetcher(replace(settings, allowed_image_hosts=allowed))
    fetched = refused = 0
    for url in _generated_urls(ls_server.port, canary.port, 250, seed):
        before = len(ls_server.requests)
        try:
            image = fetcher.fetch(url)
        except ImageError as exc:
            assert "\n" not in str(exc) and "\r" not in str(exc), repr(url)
            refused += 1
            continue
        assert (image.width, image.height) == (7, 5), repr(url)
        assert len(ls_server.requests) > before, f"{url!r} was fetched from somewhere else"
        fetched += 1
    assert fetched > 10 and refused > 100  # both outcomes were exercised
    assert set(ls_server.tokens) <= {f"Token {API_KEY}"}  # the token went with every request there


# --- regressions -----------------------------------------------------------------------------------------

def test_backslash_userinfo_url_is_refused(settings: Settings, ls_server: Recorder, canary: Recorder) -> None:
    """urlparse reads the host after ``@`` (Label Studio), urllib3 the one before the backslash (the canary)."""
    with pytest.raises(ImageError, match="backslash"):
        ImageFetcher(settings).fetch(f"http://127.0.0.1:{canary.port}\\@127.0.0.1:{ls_server.port}/x")


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/x", "http://[::1/", "http://127.0.0.1\r\n:{ls}/x",
                                 "http://127.0.0.1:{ls}\r\nX-Injected: 1/x", "http://127.0.0.1:0/x",
                                 "http://127.0.0.1:-1/x", "http://127.0.0.1:port/x", "http://[::1]]/x",
                                 "http://[v1.x]/", "http://user@127.0.0.1:{ls}/x", "http://:{ls}/x", "http:///x",
                                 "http://127.0.0.1:{ls}:{ls}/x", "http://\u0661\u0662\u0667.0.0.1/x"])
def test_malformed_urls_raise_image_error(settings: Settings, ls_server: Recorder, url: str) -> None:
    with pytest.raises(ImageError) as raised:
        ImageFetcher(settings).fetch(url.format(ls=ls_server.port))
    message = str(raised.value)
    assert "\r" not in message and "\n" not in message


def test_an_exactly_named_host_is_allowed_on_its_default_port_only(settings: Settings, canary: Recorder) -> None:
    fetcher = ImageFetcher(replace(settings, allowed_image_hosts=("127.0.0.1",)))
    with pytest.raises(ImageError, match=f"127.0.0.1 is not allowed on port {canary.port}"):
        fetcher.fetch(f"{canary.url}/x.png")


def test_an_allowed_host_and_port_gets_no_token(settings: Settings, ls_server: Recorder) -> None:
    other = Recorder(wants_token=False)
    try:
        fetcher = ImageFetcher(replace(settings, allowed_image_hosts=(f"127.0.0.1:{other.port}",)))
        assert fetcher.fetch(f"{other.url}/direct.png").width == 7
        assert fetcher.fetch(f"/redirect?to={other.url}/hop.png").width == 7  # Label Studio sends us there
        assert other.requests == [("/direct.png", None), ("/hop.png", None)]
        assert ls_server.requests[-1] == (f"/redirect?to={other.url}/hop.png", f"Token {API_KEY}")
    finally:
        other.shutdown()


def test_a_pattern_does_not_reach_loopback(settings: Settings, canary: Recorder) -> None:
    fetcher = ImageFetcher(replace(settings, allowed_image_hosts=("*",)))
    for url in (f"{canary.url}/x", f"http://localhost:{canary.port}/x", f"http://[::ffff:127.0.0.1]:{canary.port}/x"):
        with pytest.raises(ImageError, match="non-public|not allowed"):
            fetcher.fetch(url)


def test_label_studio_urls_get_the_token(settings: Settings, ls_server: Recorder) -> None:
    fetcher = ImageFetcher(settings)
    assert fetcher.fetch("/data/upload/1/a.png").width == 7
    assert fetcher.fetch(f"HTTP://127.0.0.1:{ls_server.port}/b.png").width == 7  # same origin, other case
    assert fetcher.fetch("/redirect?to=/c.png").width == 7  # a redirect within Label Studio keeps the token
    assert ls_server.requests[-3:] == [("/b.png", f"Token {API_KEY}"), ("/redirect?to=/c.png", f"Token {API_KEY}"),
                                          ("/c.png", f"Token {API_KEY}")]


@pytest.mark.parametrize("allowed", [(), ("*",)])
def test_redirect_to_the_canary_is_refused(settings: Settings, ls_server: Recorder, canary: Recorder,
                                           allowed) -> None:
    fetcher = ImageFetcher(replace(settings, allowed_image_hosts=allowed))
    for location in _locations(ls_server.port, canary.port):
        asked = "/redirect?to=" + quote(location, safe="")
        with pytest.raises(ImageError, match="not allowed|non-public|ambiguous|backslash|no host"):
            fetcher.fetch(asked)
        assert ls_server.requests[-1] == (asked, f"Token {API_KEY}"), location  # asked, and sent us on


def test_messages_escape_control_characters() -> None:
    assert short_url("http://x/\r\nINFO forged") == "http://x/\\r\\nINFO forged"
    assert len(short_url("http://x/" + "a" * 500)) == 120


# --- the deadline ----------------------------------------------------------------------------------------

class SlowServer:
    """A raw loopback server: ``drip`` declares a 100000-byte body and sends 1 byte every 0.2 s; ``stall``
    accepts and never answers; ``headers`` sends its status line 1 byte every 0.2 s."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
            data = {"drip": b"\0" * 100, "stall": b"", "headers": head}[self.mode]
            if self.mode == "drip":
                conn.sendall(head)
            for byte in data:
                if self.stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
            self.stop.wait(10)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.mark.parametrize(("mode", "message"), [("drip", "download took more than 1 s"),
                                               ("stall", "no answer within 1 s"), ("headers", "no answer within 1 s")])
@pytest.mark.parametrize("as_label_studio", [True, False])
def test_the_deadline_holds_whatever_the_server_does(settings: Settings, mode: str, message: str,
                                                     as_label_studio: bool) -> None:
    server = SlowServer(mode)
    try:
        host = server.url.removeprefix("http://")
        configured = replace(settings, image_timeout=1.0, max_image_bytes=200_000, allowed_image_hosts=(host,))
        if as_label_studio:
            configured = replace(configured, label_studio_url=server.url, allowed_image_hosts=())
        started = time.monotonic()
        with pytest.raises(ImageError, match=message):
            ImageFetcher(configured).fetch(f"{server.url}/slow.png")
        assert time.monotonic() - started < 2.0
    finally:
        server.close()
