"""Label Studio's media as the backend sees it, for tests: a loopback HTTP server that wants the API token."""

from __future__ import annotations

from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Callable, Iterator
from tests.support.net import http_server


@contextmanager
def media_server(lookup: Callable[[str], bytes | None], token: str,
                 seen: list[str] | None = None) -> Iterator[str]:
    """Serves ``lookup(path)`` as PNG (404 when None) to requests carrying ``Token <token>`` (else 401);
    yields the base URL. ``seen`` collects every requested path."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if seen is not None:
                seen.append(self.path)
            body = lookup(self.path)
            if self.headers.get("Authorization") != f"Token {token}" or body is None:
                self.send_response(404 if body is None else 401)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with http_server(Handler) as url:
        yield url
