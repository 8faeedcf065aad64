"""A labeled project for training tests: synthetic shapes served over HTTP as Label Studio media, and their
annotations fed to the store as the webhooks Label Studio sends."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Callable, Iterator

import pytest

from active_learning.settings import Settings
from active_learning.store import Store
from model.synthetic import SHAPE_CLASSES, make_shapes_dataset
from tests.media import media_server

PROJECT = 7
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    + "".join(f'<Label value="{c.name}"/>' for c in SHAPE_CLASSES)
    + "</RectangleLabels></View>"
)


@pytest.fixture(scope="session")
def shapes():
    return make_shapes_dataset(80, seed=11)


@pytest.fixture(scope="session")
def media_url(shapes) -> Iterator[str]:
    """Serves ``/data/upload/7/<i>.png`` like Label Studio's media, only with the test token."""
    pngs = {}
    for i, sample in enumerate(shapes):
        buffer = io.BytesIO()
        sample.image.save(buffer, format="PNG")
        pngs[f"/data/upload/{PROJECT}/{i}.png"] = buffer.getvalue()

    with media_server(pngs.get, "test-token") as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, small_model_dir: Path, media_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", model=str(small_model_dir), device="cpu", image_size=128,
        label_studio_url=media_url, label_studio_api_key="test-token",
        epochs=6, batch_size=4, learning_rate=1e-3, patience=6, freeze_backbone=False,
        val_fraction=0.25, val_min=2, train_min_new_annotations=5, train_min_interval_minutes=0.0,
    )


def annotation_webhook(ls_request: Callable[[str], dict], index: int, sample, *, annotation_id: int | None = None,
                       action: str = "ANNOTATION_CREATED") -> dict:
    """The body Label Studio posts when an annotator submits ``sample``'s true boxes for task ``index + 1``."""
    body = ls_request("webhook_annotation_created")
    body["action"] = action
    width, height = sample.image.size
    result = []
    for k, ((x1, y1, x2, y2), class_id) in enumerate(zip(sample.targets.xyxy.tolist(), sample.targets.class_id)):
        result.append({
            "id": f"r{k}", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": 100 * x1 / width, "y": 100 * y1 / height, "width": 100 * (x2 - x1) / width,
                      "height": 100 * (y2 - y1) / height, "rotation": 0,
                      "rectanglelabels": [SHAPE_CLASSES[int(class_id)].name]},
        })
    task_id = index + 1
    body["annotation"].update(id=annotation_id or 1000 + task_id, task=task_id, project=PROJECT, result=result)
    body["task"].update(id=task_id, project=PROJECT, data={"image": f"/data/upload/{PROJECT}/{index}.png"})
    body["project"].update(id=PROJECT, label_config=LABEL_CONFIG)
    return body


@pytest.fixture
def labeled_store(settings: Settings, shapes, ls_request) -> Store:
    """A store holding every synthetic image's true boxes as submitted annotations."""
    store = Store.from_settings(settings)
    for index, sample in enumerate(shapes):
        assert store.ingest(annotation_webhook(ls_request, index, sample)).handled
    return store


def with_settings(settings: Settings, **changes) -> Settings:
    return dataclasses.replace(settings, **changes)
