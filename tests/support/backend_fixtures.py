"""Fixture plugin (registered in tests/conftest.py): the backend under a Flask test client with real parts: the
transformers Grounding DINO code on the small offline model, a real SQLite store, and task images served over
HTTP by a local server acting as Label Studio's media (``LABEL_STUDIO_URL``). Used by tests/backend and
tests/hardening; a package's conftest may override ``settings`` or ``store`` with its own.

The constants and helpers that go with these fixtures are in tests/support/backend.py.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from active_learning.images import ImageFetcher
from active_learning.serving.pool import ModelPool, starting_model_version
from active_learning.settings import Settings
from active_learning.store import Store
from backend.app import create_app
from backend.predictor import Predictor
from model import Detector
from model.synthetic import write_shapes_video
from tests.support.backend import IMAGE_SIZE, MAX_DETECTIONS, TOKEN, VIDEO, Media
from tests.support.media import media_server


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Media]:
    """Label Studio's media: ``/data/upload/...`` is a PNG of IMAGE_SIZE, or ``VIDEO`` (an .mp4) for a name ending in .mp4
    (``broken`` in the name: 404), for TOKEN."""
    buffer = io.BytesIO()
    Image.new("RGB", IMAGE_SIZE, (200, 120, 40)).save(buffer, format="PNG")
    png = buffer.getvalue()
    video = tmp_path_factory.mktemp("media") / "shapes.mp4"
    write_shapes_video(video, **VIDEO)
    served = Media(url="", video=video.read_bytes())

    def lookup(path: str) -> bytes | None:
        if not path.startswith("/data/upload/") or "broken" in path:
            return None
        return served.video if path.endswith(".mp4") else png

    with media_server(lookup, TOKEN, seen=served.requests) as url:
        served.url = url
        yield served


@pytest.fixture(scope="session")
def model_version(detector: Detector) -> str:
    return starting_model_version(detector)


@pytest.fixture
def settings(tmp_path: Path, small_model_dir: Path, media: Media) -> Settings:
    return Settings(
        data_dir=tmp_path, model=str(small_model_dir), device="cpu", image_size=128,
        box_threshold=0.0, text_threshold=0.0, max_detections=MAX_DETECTIONS,
        label_studio_url=media.url, label_studio_api_key=TOKEN,
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = Store.from_settings(settings)
    yield store
    store.close()


@pytest.fixture
def make_client(settings, store, detector):
    """``make_client(**settings_overrides)`` -> (Flask test client, predictor)."""

    def make(**overrides):
        s = replace(settings, **overrides)
        predictor = Predictor(s, ModelPool(s, store, starting=detector), store, ImageFetcher(s))
        return create_app(s, predictor).test_client(), predictor

    return make


@pytest.fixture
def client(make_client):
    return make_client()[0]
