"""Task videos kept on disk by URL, so a video is downloaded once for prediction, training and statistics.

A video is streamed by the image fetcher (every URL rule of ``active_learning.images.fetcher``, with
``max_video_bytes`` and ``video_timeout``) into a temporary file of ``settings.video_cache_dir`` and renamed to
``<sha256(url)><extension>`` when complete, so processes can share the directory and no reader ever sees a partial
file. OpenCV reads the file by its path (it needs one: a video is no stream of frames it can seek in memory).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from active_learning.images.fetcher import ImageFetcher
from active_learning.settings import Settings

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".ogv", ".mpg", ".mpeg")


class VideoCache:
    def __init__(self, settings: Settings, fetcher: ImageFetcher | None = None):
        self.root = Path(settings.video_cache_dir)
        self.fetcher = fetcher or ImageFetcher(settings)

    def path(self, url: str) -> Path:
        """The local file of the video at ``url``: downloaded the first time, from disk after. Raises
        ``ImageError`` (one line, fit to show a user) when it cannot be downloaded."""
        target = self.root / (hashlib.sha256(url.encode()).hexdigest() + _extension(url))
        if target.exists():
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        os.close(fd)
        self.fetcher.download_to(url, Path(partial))  # removes the partial file when it fails
        os.replace(partial, target)
        return target


def _extension(url: str) -> str:
    """The URL's video extension (``/data/upload/3/clip.MP4``, ``/data/local-files/?d=clip.mp4`` -> ``.mp4``), which
    OpenCV may go by; else none."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    for part in (parts.path, parts.query):
        suffix = PurePosixPath(part).suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            return suffix
    return ""
