"""Fetching task images safely, and keeping them on disk so training never needs Label Studio up.

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
import os
import socket
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlparse

import requests
from PIL import Image, ImageOps

from active_learning.labelstudio import LabelStudioAuth, LabelStudioError
from active_learning.settings import Settings

if TYPE_CHECKING:
    from active_learning.store import Store

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
                    raise ImageError(f"image {_short(url)}: HTTP {response.status_code}")
                return self._read(response, url, deadline)
        raise ImageError(f"image {_short(url)}: more than {MAX_REDIRECTS} redirects")

    def _absolute(self, url: str) -> str:
        if url.startswith("/") and not url.startswith("//"):
            if not self.ls_url:
                raise ImageError(f"image {_short(url)} is relative to Label Studio, but LABEL_STUDIO_URL is not set")
            return self.ls_url + url
        return url

    def _check(self, url: str) -> None:
        """Refuse what the rules forbid, before any connection is made."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise ImageError(f"image {_short(url)}: only http(s) URLs are allowed, not {parsed.scheme or 'none'}:")
        host = (parsed.hostname or "").lower()
        if not host:
            raise ImageError(f"image {_short(url)}: no host")
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
            raise ImageError(f"image {_short(url)}: {exc}") from None
        except requests.Timeout:
            raise ImageError(f"image {_short(url)}: no answer within {self.settings.image_timeout:g} s") from None
        except requests.RequestException as exc:
            raise ImageError(f"image {_short(url)}: cannot connect ({type(exc).__name__})") from None

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
            raise ImageError(f"image {_short(url)} is {int(declared)} bytes, more than the {cap}-byte limit")
        body = bytearray()
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                body += chunk
                if len(body) > cap:
                    raise ImageError(f"image {_short(url)} is more than the {cap}-byte limit")
                if time.monotonic() > deadline:
                    raise ImageError(f"image {_short(url)}: download took more than {self.settings.image_timeout:g} s")
        except requests.RequestException as exc:
            raise ImageError(f"image {_short(url)}: download failed ({type(exc).__name__})") from None
        return bytes(body)


def decode(url: str, data: bytes, max_pixels: int) -> FetchedImage:
    """Bytes -> RGB, EXIF-transposed image; the pixel cap is checked from the header, before decoding."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap applies
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise ImageError(f"image {_short(url)} is {image.width}x{image.height} pixels, more than the "
                                 f"{max_pixels}-pixel limit")
            image = ImageOps.exif_transpose(image).convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"image {_short(url)} cannot be decoded ({type(exc).__name__})") from None
    return FetchedImage(url=url, sha256=sha, image=image, width=image.width, height=image.height)


class ImageCache:
    """Images stored by content hash under ``settings.image_cache_dir``, and which URL gave which hash.

    Layout: ``<dir>/<sha[:2]>/<sha>`` holds the bytes as downloaded; ``<dir>/urls/<sha256(url)>`` holds the
    content hash of that URL. Files appear atomically, so processes can share the directory.
    """

    def __init__(self, settings: Settings, fetcher: ImageFetcher | None = None):
        self.settings = settings
        self.root = Path(settings.image_cache_dir)
        self.fetcher = fetcher or ImageFetcher(settings)

    def get(self, url: str) -> FetchedImage:
        """The image at ``url``: from disk when this URL was fetched before, else fetched and stored."""
        sha = self._lookup(url)
        if sha is not None:
            return decode(url, self.path_for(sha).read_bytes(), self.settings.max_image_pixels)
        return self.put(url, self.fetcher.download(url))

    def put(self, url: str, data: bytes) -> FetchedImage:
        """Store ``data`` as the image behind ``url``: ``get(url)`` then reads it from disk. This is also how images
        that never were on the web (``groundloop import``) get into the cache."""
        fetched = decode(url, data, self.settings.max_image_pixels)
        path = self.path_for(fetched.sha256)
        if not path.exists():
            _write_atomic(path, data)
        _write_atomic(self._index_path(url), fetched.sha256.encode())
        return fetched

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def _lookup(self, url: str) -> str | None:
        try:
            sha = self._index_path(url).read_text().strip()
        except FileNotFoundError:
            return None
        return sha if self.path_for(sha).exists() else None

    def _index_path(self, url: str) -> Path:
        return self.root / "urls" / hashlib.sha256(url.encode()).hexdigest()


def cache_task_image(store: "Store", cache: ImageCache, task_id: int) -> FetchedImage:
    """Cache one task's image and note its hash and size on the task (call it after an annotation arrives)."""
    task = store.get_task(task_id)
    if task is None or not task.image_url:
        raise ImageError(f"task {task_id} has no image URL in the store")
    fetched = cache.get(task.image_url)
    store.record_task_image(task_id, fetched.sha256, fetched.width, fetched.height)
    return fetched


def cache_labeled_images(store: "Store", cache: ImageCache, project_id: int) -> list[str]:
    """Cache the images of the project's labeled tasks not cached yet; returns one error line per failure."""
    errors = []
    for task in store.labeled_tasks(project_id):
        if task.image_sha256 and cache.path_for(task.image_sha256).exists():
            continue
        try:
            cache_task_image(store, cache, task.task_id)
        except ImageError as exc:
            errors.append(f"task {task.task_id}: {exc}")
    return errors


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _short(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."
