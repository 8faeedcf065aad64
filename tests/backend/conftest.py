"""The backend under a Flask test client, with a stand-in detector and image fetcher and a real SQLite store."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from active_learning.images import FetchedImage, ImageError
from active_learning.settings import Settings
from active_learning.store import Store
from backend.app import create_app
from backend.predictor import Predictor

IMAGE_SIZE = (64, 48)


class FakeDetector:
    """Finds one box of the first class per image (partly outside the image, to check the clipping)."""

    source = "/models/fake-dino"
    device = "cpu"
    version_digest = "0123456789ab"

    def __init__(self) -> None:
        self.calls: list[tuple[int, list, object]] = []
        self.fail = False

    def detect(self, images, classes, settings):
        self.calls.append((len(images), list(classes), settings))
        if self.fail:
            raise RuntimeError("boom")
        return [self._one(image, classes) for image in images]

    @staticmethod
    def _one(image, classes) -> sv.Detections:
        w, h = image.size
        detections = sv.Detections(
            xyxy=np.array([[w * 0.25, h * 0.5, w * 1.5, h * 0.75]]),
            confidence=np.array([0.8]),
            class_id=np.array([0]),
            data={"class_name": np.array([classes[0].name])},
        )
        detections.metadata["uncertainty"] = 0.3
        return detections


class FakeFetcher:
    """Serves a small image for every URL except those in ``broken``."""

    def __init__(self) -> None:
        self.broken: set[str] = set()
        self.fetched: list[str] = []

    def fetch(self, url: str) -> FetchedImage:
        self.fetched.append(url)
        if url in self.broken:
            raise ImageError(f"{url}: 404 Not Found")
        image = Image.new("RGB", IMAGE_SIZE, "white")
        return FetchedImage(url, hashlib.sha256(url.encode()).hexdigest(), image, *IMAGE_SIZE)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, box_threshold=0.3)


@pytest.fixture
def store(settings: Settings) -> Store:
    store = Store.from_settings(settings)
    yield store
    store.close()


@pytest.fixture
def detector() -> FakeDetector:
    return FakeDetector()


@pytest.fixture
def fetcher() -> FakeFetcher:
    return FakeFetcher()


@pytest.fixture
def make_client(settings, store, detector, fetcher):
    """``make_client(**settings_overrides, sync_model_version=None)`` -> (Flask test client, predictor)."""

    def make(sync_model_version=None, **overrides):
        s = replace(settings, **overrides)
        predictor = Predictor(s, detector, store, fetcher, sync_model_version=sync_model_version)
        return create_app(s, predictor).test_client(), predictor

    return make


@pytest.fixture
def client(make_client):
    return make_client()[0]
