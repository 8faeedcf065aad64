"""A labeled project for training tests: synthetic shapes served over HTTP as Label Studio media (the ``shapes``
and ``media_url`` fixtures, tests/support/training_fixtures.py), and their annotations fed to the store as the
webhooks Label Studio sends (tests/support/training.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from active_learning.settings import Settings
from active_learning.store import Store
from tests.support.training import TOKEN, annotation_webhook


@pytest.fixture
def settings(tmp_path: Path, small_model_dir: Path, media_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", model=str(small_model_dir), device="cpu", image_size=128,
        label_studio_url=media_url, label_studio_api_key=TOKEN,
        epochs=6, batch_size=4, learning_rate=1e-3, patience=6, freeze_backbone=False,
        val_fraction=0.25, val_min=2, train_min_new_annotations=5, train_min_interval_minutes=0.0,
    )


@pytest.fixture
def labeled_store(settings: Settings, shapes, ls_request) -> Store:
    """A store holding every synthetic image's true boxes as submitted annotations."""
    store = Store.from_settings(settings)
    for index, sample in enumerate(shapes):
        assert store.ingest(annotation_webhook(ls_request, index, sample)).handled
    return store
