"""Task images kept on disk, by content hash, so training and export never need Label Studio up."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from active_learning.images.fetcher import FetchedImage, ImageError, ImageFetcher, decode
from active_learning.settings import Settings

if TYPE_CHECKING:
    from active_learning.store import Store


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


def cache_task_image(store: Store, cache: ImageCache, task_id: int) -> FetchedImage | None:
    """Cache one task's image and note its hash and size on the task (call it after an annotation arrives); the
    video of a video project's task goes to the video cache instead (None)."""
    task = store.tasks.get(task_id)
    if task is None or not task.image_url:
        raise ImageError(f"task {task_id} has no image URL in the store")
    schema = store.projects.schema(task.project_id)
    if schema is not None and schema.is_video:
        from active_learning.video.cache import VideoCache

        VideoCache(cache.settings, cache.fetcher).path(task.image_url)
        return None
    fetched = cache.get(task.image_url)
    store.tasks.record_image(task_id, fetched.sha256, fetched.width, fetched.height)
    return fetched


def cache_labeled_images(store: Store, cache: ImageCache, project_id: int) -> list[str]:
    """Cache the images of the project's labeled tasks not cached yet; returns one error line per failure."""
    errors = []
    schema = store.projects.schema(project_id)
    if schema is not None and schema.is_video:
        return []  # a video task's video is cached (and its errors reported) when its frames are read
    for task in store.tasks.labeled(project_id):
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
