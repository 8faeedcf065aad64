"""Fetching task images safely.

Task image URLs come from whoever can create tasks, and /predict fetches them on the server, so every fetch and
every redirect hop obeys one URL policy (``UrlPolicy``) before anything is sent:

- relative URLs (``/data/upload/...``, ``/data/local-files/?d=...``) are resolved against LABEL_STUDIO_URL;
- only http(s). The URL is parsed the way the HTTP client parses it (requests' preparation, then urllib3's
  ``parse_url``) and also with ``urllib.parse``; a URL on whose scheme, host or port the parses disagree is
  refused, and so is anything ambiguous: backslashes, whitespace or control characters anywhere, userinfo
  (``@`` before the host), a bad port, a malformed or non-ASCII host, an IPv4 address in any form other than
  the dotted quad;
- an origin is scheme + host + port (80/443 filled in). Allowed are Label Studio's own origin and
  ``settings.allowed_image_hosts``: ``host`` (its default ports), ``host:port`` (that port), or a pattern
  ``*`` / ``*.example.com`` (``:port`` optional);
- the API key goes to Label Studio's origin alone: never to another host, nor on a redirect to one;
- every connection is made by this module (``_GuardedConnection``): the host is resolved within the deadline
  and, unless the origin is Label Studio's or named exactly, every address must be public (no loopback,
  private, link-local, multicast, reserved or unspecified address, IPv4-mapped ones included); the socket
  connects to the address that was checked, so no DNS-rebinding window remains;
- ``image_timeout`` is a wall-clock deadline for the whole download (resolving, connecting, redirects,
  headers, body): when it passes, the download's sockets are shut down, whatever the server is doing;
  ``max_image_bytes`` is counted as bytes arrive; ``max_image_pixels`` is checked from the header before
  decoding.

Videos (``download_to``) obey the same rules with their own cap and deadline, and go to a file chunk by chunk:
a video may be gigabytes, so its body is never held in memory.

Failures raise ``ImageError`` with a one-line message fit to show a user (URLs in it quoted, escaped and
truncated).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urljoin

import requests
import urllib3
from PIL import Image, ImageOps

from active_learning.images.transport import Deadline, GuardedAdapter, active_download
from active_learning.images.urls import ImageError, Target, UrlPolicy, quoted, short_url
from active_learning.labelstudio.client import LabelStudioAuth, LabelStudioError
from active_learning.settings import Settings

__all__ = ["FetchedImage", "ImageError", "ImageFetcher", "decode", "quoted", "short_url"]

MAX_REDIRECTS = 5
CHUNK_BYTES = 16 * 1024
MAX_ASPECT_RATIO = 100


@dataclass(frozen=True)
class FetchedImage:
    url: str
    sha256: str
    image: Image.Image
    """Decoded, EXIF-transposed, RGB."""
    width: int
    height: int


class ImageFetcher:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.ls_url = settings.label_studio_url.rstrip("/")
        self.policy = UrlPolicy(self.ls_url, tuple(settings.allowed_image_hosts))
        self.auth = LabelStudioAuth(self.ls_url, settings.label_studio_api_key, settings.image_timeout) \
            if self.ls_url and settings.label_studio_api_key else None

    def fetch(self, url: str) -> FetchedImage:
        """Download and decode ``url``, applying every rule in this module's docstring."""
        return decode(url, self.download(url), self.settings.max_image_pixels)

    def download(self, url: str) -> bytes:
        """The raw bytes behind ``url``, with the URL, host, address, redirect, size and time rules applied."""
        body = bytearray()
        self._download(url, body.extend, self.settings.max_image_bytes, self.settings.image_timeout, "image")
        return bytes(body)

    def download_to(self, url: str, path: Path, max_bytes: int, timeout: float, what: str = "image") -> int:
        """Stream the body behind ``url`` into the file ``path``, chunk by chunk (never held in memory), with the
        rules of ``download`` but the cap ``max_bytes`` and the deadline ``timeout``; returns the bytes written.
        ``what`` names the thing in messages ("video").

        On any failure ``path`` is removed (this function owns it from the start), so a caller's temporary file never
        outlives a failed download; a file that cannot be written is an ImageError too."""
        try:
            with open(path, "wb") as out:
                return self._download(url, out.write, max_bytes, timeout, what)
        except OSError as exc:  # the file's: network errors are ImageErrors by now
            path.unlink(missing_ok=True)
            reason = exc.strerror or type(exc).__name__
            raise ImageError(f"{what} {quoted(url)}: cannot write it to disk ({reason})") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def _download(self, url: str, sink: Callable[[bytes], object], cap: int, timeout: float, what: str) -> int:
        if not isinstance(url, str) or not url.strip():
            raise ImageError(f"{what} URL is empty")
        deadline = Deadline(timeout)
        adapter = GuardedAdapter()  # one per download: no connection, and no deadline, outlives it
        try:
            with active_download(self.policy, deadline):
                return self._follow(adapter, self._absolute(url, what), url, deadline, _Body(sink, cap, what))
        finally:
            adapter.close()
            deadline.close()

    def _follow(self, adapter: GuardedAdapter, target: str, url: str, deadline: Deadline, body: "_Body") -> int:
        """Each hop is checked by the policy; the key goes only to hops on Label Studio's origin."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self._get(adapter, self.policy.check(target), url, deadline, body.what)
            if response.is_redirect:
                response.close()
                target = _redirect_target(response, url, body.what)
                continue
            with response:
                if response.status_code != 200:
                    raise ImageError(f"{body.what} {quoted(url)}: HTTP {response.status_code}")
                return self._read(response, url, deadline, body)
        raise ImageError(f"{body.what} {quoted(url)}: more than {MAX_REDIRECTS} redirects")

    def _absolute(self, url: str, what: str) -> str:
        if url.startswith("/") and not url.startswith("//"):
            if self.policy.label_studio is None:
                raise ImageError(f"{what} {quoted(url)} is relative to Label Studio, but LABEL_STUDIO_URL is not "
                                 "set to an http(s) URL")
            return self.ls_url + url
        return url

    def _get(self, adapter: GuardedAdapter, target: Target, url: str, deadline: Deadline,
             what: str) -> requests.Response:
        """One request, straight to the adapter: a Session would follow (and read) redirects, keep cookies
        (which ignore ports) and read proxies and .netrc from the environment."""
        try:
            prepared = requests.Request("GET", target.url, headers=requests.utils.default_headers()).prepare()
            if prepared.url != target.url:
                raise ImageError(f"{what} {quoted(url)}: ambiguous URL (it changes when prepared)")
            if target.label_studio and self.auth is not None:
                self.auth(prepared)
            return adapter.send(prepared, stream=True, timeout=(deadline.remaining(), deadline.remaining()),
                                verify=True, proxies={})
        except LabelStudioError as exc:
            raise ImageError(f"{what} {quoted(url)}: {exc}") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if deadline.expired or isinstance(exc, requests.Timeout):
                raise ImageError(f"{what} {quoted(url)}: no answer within {deadline.seconds:g} s") from None
            raise ImageError(f"{what} {quoted(url)}: cannot connect ({type(exc).__name__})") from None

    def _read(self, response: requests.Response, url: str, deadline: Deadline, body: "_Body") -> int:
        """The body into its sink, chunk by chunk: the byte cap from Content-Length and as bytes arrive (before a
        chunk over it reaches the sink). The sink's own errors (a full disk) pass through unchanged."""
        cap, what = body.cap, body.what
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise ImageError(f"{what} {quoted(url)} is {int(declared)} bytes, more than the {cap}-byte limit")
        size = 0
        for chunk in _chunks(response, url, deadline, what):
            size += len(chunk)
            if size > cap:
                raise ImageError(f"{what} {quoted(url)} is more than the {cap}-byte limit")
            body.sink(chunk)
        return size


@dataclass(frozen=True)
class _Body:
    """Where a download's bytes go, how many may come, and what to call the thing in messages."""

    sink: Callable[[bytes], object]
    cap: int
    what: str


def _chunks(response: requests.Response, url: str, deadline: Deadline, what: str) -> Iterator[bytes]:
    """The body's chunks as they arrive; network errors and the deadline (the watchdog's, checked per chunk too)
    become ImageError."""
    too_slow = ImageError(f"{what} {quoted(url)}: download took more than {deadline.seconds:g} s")
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            yield chunk
            if deadline.expired:
                raise too_slow
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if deadline.expired:
            raise too_slow from None
        raise ImageError(f"{what} {quoted(url)}: download failed ({type(exc).__name__})") from None
    if deadline.expired:  # the watchdog's shutdown can look like the end of an undeclared body
        raise too_slow


def _redirect_target(response: requests.Response, url: str, what: str) -> str:
    """The next hop, for the policy to check like any URL."""
    location = response.headers.get("Location", "")
    try:
        return urljoin(response.url, location)
    except ValueError:
        raise ImageError(f"{what} {quoted(url)}: malformed redirect to {quoted(location)}") from None


def decode(url: str, data: bytes, max_pixels: int) -> FetchedImage:
    """Bytes -> RGB, EXIF-transposed image; the pixel cap is checked from the header, before decoding."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap applies
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise ImageError(f"image {quoted(url)} is {image.width}x{image.height} pixels, more than the "
                                 f"{max_pixels}-pixel limit")
            if max(image.size) > MAX_ASPECT_RATIO * max(1, min(image.size)):
                raise ImageError(f"image {quoted(url)} is {image.width}x{image.height} pixels: sides more than "
                                 f"{MAX_ASPECT_RATIO}:1 apart are no photo a detector can read")
            # In place, and converted only when not RGB already: one full-size copy of the pixels, not three
            # (a 10000x8000 image is 240 MB per copy).
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode != "RGB":
                image = image.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"image {quoted(url)} cannot be decoded ({type(exc).__name__})") from None
    return FetchedImage(url=url, sha256=sha, image=image, width=image.width, height=image.height)
