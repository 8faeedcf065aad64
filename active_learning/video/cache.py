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
from urllib.parse import parse_qsl, urlsplit

from active_learning.images.fetcher import ImageFetcher
from active_learning.images.urls import ImageError, quoted
from active_learning.settings import Settings

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".ogv", ".mpg", ".mpeg")


class VideoCache:
    """One file per video URL under ``settings.video_cache_dir``; the temporary files of downloads in progress
    (``.tmp-*``) sit beside them, in the same directory, so the final rename is atomic."""

    def __init__(self, settings: Settings, fetcher: ImageFetcher | None = None):
        self.settings = settings
        self.root = Path(settings.video_cache_dir)
        self.fetcher = fetcher or ImageFetcher(settings)

    def path(self, url: str) -> Path:
        """The local file of the video at ``url``: downloaded the first time, from disk after (no request). Raises
        ``ImageError`` (one line, fit to show a user) when it cannot be downloaded or stored.

        Callers racing on one URL each download to their own temporary file and rename it over the same target;
        the last rename wins with a complete file, so no one ever opens a torn one."""
        target = self.root / (hashlib.sha256(url.encode()).hexdigest() + _extension(url))
        if target.exists():
            return target
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            os.close(fd)
        except OSError as exc:
            raise ImageError(f"video {quoted(url)}: the video cache cannot be written ({exc.strerror})") from None
        # download_to removes the partial file when it fails; only the rename is ours to clean up after
        self.fetcher.download_to(url, Path(partial), self.settings.max_video_bytes, self.settings.video_timeout,
                                 what="video")
        try:
            os.replace(partial, target)
        except OSError as exc:
            Path(partial).unlink(missing_ok=True)
            raise ImageError(f"video {quoted(url)}: the video cache cannot be written ({exc.strerror})") from None
        return target


def _extension(url: str) -> str:
    """The URL's video extension (``/data/upload/3/clip.MP4``, ``/data/local-files/?d=dir/clip.mp4`` -> ``.mp4``),
    which OpenCV may go by; else none."""
    try:
        parts = urlsplit(url)
        candidates = [parts.path] + [value for _, value in parse_qsl(parts.query)]
    except ValueError:
        return ""
    for part in candidates:
        suffix = PurePosixPath(part).suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            return suffix
    return ""
