"""Fetching task images safely.

Task image URLs come from whoever can create tasks, and /predict fetches them on the server, so every fetch
obeys the same rules (``ImageFetcher``):

- relative URLs (``/data/upload/...``, ``/data/local-files/?d=...``) are resolved against LABEL_STUDIO_URL
  and sent with its API key; the key never goes to any other host;
- only http(s), and only from Label Studio itself (its scheme, host and port) or from
  ``settings.allowed_image_hosts``, where an entry ``*`` or ``*.example.com`` matches by pattern;
- a host matched by pattern must not resolve to a loopback, private, link-local or otherwise special address
  (Label Studio and hosts named exactly are trusted); redirects are followed by hand and every hop is checked
  again. The connection resolves the name once more, so a DNS-rebinding window remains: name hosts exactly
  where that matters;
- ``max_image_bytes`` (counted while streaming), ``max_image_pixels`` (checked from the header before
  decoding), ``image_timeout`` (per request, and for the whole download).

Failures raise ``ImageError`` with a one-line message fit to show a user.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from fnmatch import fnmatch
from urllib.parse import urljoin, urlparse

import requests
from PIL import Image, ImageOps

from active_learning.labelstudio.client import LabelStudioAuth, LabelStudioError
from active_learning.settings import Settings

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024


class ImageError(Exception):
    """An image could not be fetched or decoded; the message is one line, fit for a user."""


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
        ls = urlparse(self.ls_url)
        self.ls_origin = (ls.scheme, ls.hostname, ls.port) if ls.hostname else None
        self.auth = LabelStudioAuth(self.ls_url, settings.label_studio_api_key, settings.image_timeout) \
            if self.ls_url and settings.label_studio_api_key else None
        self._local = threading.local()  # one requests.Session per thread: sessions are not thread-safe

    def fetch(self, url: str) -> FetchedImage:
        """Download and decode ``url``, applying every rule in this module's docstring."""
        return decode(url, self.download(url), self.settings.max_image_pixels)

    def download(self, url: str) -> bytes:
        """The raw bytes behind ``url``, with the URL, host, address, redirect, size and time rules applied."""
        if not isinstance(url, str) or not url.strip():
            raise ImageError("image URL is empty")
        target = self._absolute(url.strip())
        deadline = time.monotonic() + self.settings.image_timeout
        for _ in range(MAX_REDIRECTS + 1):
            self._check(target)
            response = self._get(target, url)
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                target = urljoin(target, location)
                continue
            with response:
                if response.status_code != 200:
                    raise ImageError(f"image {short_url(url)}: HTTP {response.status_code}")
                return self._read(response, url, deadline)
        raise ImageError(f"image {short_url(url)}: more than {MAX_REDIRECTS} redirects")

    def _absolute(self, url: str) -> str:
        if url.startswith("/") and not url.startswith("//"):
            if not self.ls_url:
                raise ImageError(f"image {short_url(url)} is relative to Label Studio, but LABEL_STUDIO_URL is not set")
            return self.ls_url + url
        return url

    def _check(self, url: str) -> None:
        """Refuse what the rules forbid, before any connection is made."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise ImageError(f"image {short_url(url)}: only http(s) URLs are allowed, not {parsed.scheme or 'none'}:")
        host = (parsed.hostname or "").lower()
        if not host:
            raise ImageError(f"image {short_url(url)}: no host")
        if self._is_label_studio(url) or host in self._named_hosts():
            return
        if not any(fnmatch(host, pattern) for pattern in self._host_patterns()):
            allowed = ", ".join(self.settings.allowed_image_hosts) or "Label Studio's own URL alone"
            raise ImageError(f"image host {host} is not allowed (allowed: {allowed}; "
                             "see GROUNDLOOP_ALLOWED_IMAGE_HOSTS)")
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, parsed.port or 443, proto=socket.IPPROTO_TCP)}
        except (socket.gaierror, UnicodeError):
            raise ImageError(f"image host {host} does not resolve") from None
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global or ip.is_multicast:
                raise ImageError(f"image host {host} resolves to the non-public address {ip}: refused "
                                 "(name it exactly in GROUNDLOOP_ALLOWED_IMAGE_HOSTS to allow it)")

    def _named_hosts(self) -> set[str]:
        return {h.lower() for h in self.settings.allowed_image_hosts if "*" not in h and "?" not in h}

    def _host_patterns(self) -> list[str]:
        return [h.lower() for h in self.settings.allowed_image_hosts if "*" in h or "?" in h]

    def _is_label_studio(self, url: str) -> bool:
        parsed = urlparse(url)
        return self.ls_origin is not None and (parsed.scheme, parsed.hostname, parsed.port) == self.ls_origin

    def _get(self, target: str, url: str) -> requests.Response:
        try:
            return self._session().get(
                target,
                stream=True,
                allow_redirects=False,
                timeout=self.settings.image_timeout,
                auth=self.auth if self._is_label_studio(target) else None,
            )
        except LabelStudioError as exc:
            raise ImageError(f"image {short_url(url)}: {exc}") from None
        except requests.Timeout:
            raise ImageError(f"image {short_url(url)}: no answer within {self.settings.image_timeout:g} s") from None
        except requests.RequestException as exc:
            raise ImageError(f"image {short_url(url)}: cannot connect ({type(exc).__name__})") from None

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # no proxies from the environment: the checks are about the real hosts
        return session

    def _read(self, response: requests.Response, url: str, deadline: float) -> bytes:
        cap = self.settings.max_image_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise ImageError(f"image {short_url(url)} is {int(declared)} bytes, more than the {cap}-byte limit")
        body = bytearray()
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                body += chunk
                if len(body) > cap:
                    raise ImageError(f"image {short_url(url)} is more than the {cap}-byte limit")
                if time.monotonic() > deadline:
                    raise ImageError(f"image {short_url(url)}: download took more than {self.settings.image_timeout:g} s")
        except requests.RequestException as exc:
            raise ImageError(f"image {short_url(url)}: download failed ({type(exc).__name__})") from None
        return bytes(body)


def decode(url: str, data: bytes, max_pixels: int) -> FetchedImage:
    """Bytes -> RGB, EXIF-transposed image; the pixel cap is checked from the header, before decoding."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap applies
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise ImageError(f"image {short_url(url)} is {image.width}x{image.height} pixels, more than the "
                                 f"{max_pixels}-pixel limit")
            image = ImageOps.exif_transpose(image).convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"image {short_url(url)} cannot be decoded ({type(exc).__name__})") from None
    return FetchedImage(url=url, sha256=sha, image=image, width=image.width, height=image.height)


def short_url(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."
