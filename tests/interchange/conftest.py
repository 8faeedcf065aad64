"""A store with its image cache in a temp dir; the files on disk the tests import (PNG images, Pascal VOC XML)
are written with tests/support/datasets.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from active_learning.images import ImageCache
from active_learning.settings import Settings
from active_learning.store import Store


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def store(settings: Settings):
    store = Store.from_settings(settings)
    yield store
    store.close()


@pytest.fixture
def cache(settings: Settings) -> ImageCache:
    return ImageCache(settings)
