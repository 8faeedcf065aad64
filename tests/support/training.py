"""The labeled synthetic project the training tests use: its id and label config, the annotation webhook Label
Studio posts for one of its images, and settings with a few fields changed. Its images come from the ``shapes``
and ``media_url`` fixtures (tests/support/training_fixtures.py)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from active_learning.settings import Settings
from model.prompts import ClassSpec
from model.synthetic import SHAPE_CLASSES

PROJECT = 7
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    + "".join(f'<Label value="{c.name}"/>' for c in SHAPE_CLASSES)
    + "</RectangleLabels></View>"
)
TOKEN = "test-token"
"""The Label Studio API key the ``media_url`` fixture wants."""


def annotation_webhook(ls_request: Callable[[str], dict], index: int, sample, *, annotation_id: int | None = None,
                       action: str = "ANNOTATION_CREATED", labels: Sequence[ClassSpec] = SHAPE_CLASSES,
                       label_config: str = LABEL_CONFIG) -> dict:
    """The body Label Studio posts when an annotator submits ``sample``'s true boxes for task ``index + 1``
    (``class_id`` indexing ``labels``) in a project with ``label_config``."""
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
                      "rectanglelabels": [labels[int(class_id)].name]},
        })
    task_id = index + 1
    body["annotation"].update(id=annotation_id or 1000 + task_id, task=task_id, project=PROJECT, result=result)
    body["task"].update(id=task_id, project=PROJECT, data={"image": f"/data/upload/{PROJECT}/{index}.png"})
    body["project"].update(id=PROJECT, label_config=label_config)
    return body


def with_settings(settings: Settings, **changes) -> Settings:
    return dataclasses.replace(settings, **changes)
