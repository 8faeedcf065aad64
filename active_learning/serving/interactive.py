"""Label Studio's smart tools: the clicks or the box an annotator just drew, answered with the segmenter's mask.

With ``<KeyPointLabels smart="true">`` (or ``<RectangleLabels smart="true">`` beside brush or polygon labels) in the
config, the editor sends what was drawn in ``params.context.result`` of an interactive /predict: keypoints
(``is_positive`` true for "this object", false for "not this") and at most one box, in percent of
``original_width/height``, each carrying the label the annotator picked. The answer is ONE mask of that label, as
in Label Studio's own SAM examples: a region of each mask control offering the label (else of the first mask
control); in a config without mask controls, a rectangle (the mask's bounding box) on the box controls likewise.
Label Studio shows the answer and stores nothing; neither does groundloop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import supervision as sv

from active_learning.labelstudio.config import BOXES, KEYPOINTS, ProjectSchema
from active_learning.labelstudio.regions import MAX_SIDE, regions_from_detections

if TYPE_CHECKING:
    from PIL import Image

    from model.segmenter import Segmenter

MAX_CLICKS = 100
"""Keypoints one smart prompt may hold: a person clicks a few times; more is no prompt."""


@dataclass(frozen=True)
class SmartPrompt:
    label: str | None
    """The label the annotator chose on the tool (None: none chosen; the first label of the answering control)."""
    points: np.ndarray
    """(K, 2) pixel x, y on an image of ``size``."""
    point_labels: np.ndarray
    """(K,) 1 for a positive click, 0 for a negative one."""
    box: np.ndarray | None
    """(4,) pixel x1, y1, x2, y2, or None."""
    size: tuple[int, int]
    """``(original_width, original_height)`` the editor measured the prompt on."""

    def scaled_to(self, width: int, height: int) -> "SmartPrompt":
        """The prompt on an image of ``width`` x ``height`` (the fetched image may differ from the editor's)."""
        sx, sy = width / self.size[0], height / self.size[1]
        box = None if self.box is None else self.box * [sx, sy, sx, sy]
        return SmartPrompt(self.label, self.points * [sx, sy], self.point_labels, box, (width, height))


def smart_prompt(schema: ProjectSchema, context: Any) -> SmartPrompt | None:
    """The smart-tool prompt in ``params.context``, None when there is none. Raises ValueError naming the item for
    anything malformed (the route answers 400)."""
    tools = {tool.name: tool.kind for tool in schema.smart_tools}
    if not tools or not isinstance(context, dict) or not isinstance(context.get("result"), list):
        return None
    items = [(i, item) for i, item in enumerate(context["result"])
             if isinstance(item, dict) and tools.get(item.get("from_name")) == item.get("type")]
    if not items:
        return None
    if len(items) > MAX_CLICKS:
        raise ValueError(f"context.result: {len(items)} smart regions, more than the {MAX_CLICKS} accepted")
    points, point_labels, box, label, size = [], [], None, None, None
    for i, item in items:
        where = f"context.result[{i}]"
        size = _size(item, where)
        value = item.get("value")
        if not isinstance(value, dict):
            raise ValueError(f"{where}.value: expected an object")
        x, y = (_percent(value, key, where) * side / 100.0 for key, side in (("x", size[0]), ("y", size[1])))
        chosen = value.get(item["type"])
        if isinstance(chosen, list) and chosen and isinstance(chosen[0], str):
            label = chosen[0]
        if item["type"] == KEYPOINTS:
            points.append([x, y])
            point_labels.append(0 if item.get("is_positive") is False else 1)
        elif item["type"] == BOXES:
            w, h = (_percent(value, key, where) * side / 100.0 for key, side in (("width", size[0]),
                                                                                  ("height", size[1])))
            box = np.array([x, y, x + w, y + h], dtype=float)
    return SmartPrompt(label, np.array(points, dtype=float).reshape(-1, 2), np.array(point_labels, dtype=int),
                       box, size)


def answer_smart_prompt(segmenter: "Segmenter", image: "Image.Image", prompt: SmartPrompt,
                        schema: ProjectSchema) -> list[dict]:
    """The regions answering ``prompt`` on ``image``: one mask (or its box), labeled as the annotator chose."""
    prompt = prompt.scaled_to(image.width, image.height)
    mask = segmenter.segment_points(image, prompt.points, prompt.point_labels, prompt.box)
    if not mask.any():
        return []
    kind = schema.mask_controls or list(schema.controls)
    label = prompt.label or kind[0].classes[0].name
    offering = [c for c in kind if any(spec.name == label for spec in c.classes)]
    found = sv.Detections(xyxy=sv.mask_to_xyxy(mask[None]).astype(float), mask=mask[None],
                          data={"class_name": np.array([label])})
    if not offering:  # a label of the tool that no answering control has: the first one gets it, as typed
        return regions_from_detections(found, schema, image.width, image.height, control=kind[0].name)
    return regions_from_detections(found, schema, image.width, image.height,
                                   threshold=lambda control, _: -1.0 if control in offering else None)


def _size(item: dict, where: str) -> tuple[int, int]:
    width, height = item.get("original_width"), item.get("original_height")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= MAX_SIDE
               for v in (width, height)):
        raise ValueError(f"{where}.original_width/height: expected positive numbers up to {MAX_SIDE}")
    return int(width), int(height)


def _percent(value: dict, key: str, where: str) -> float:
    raw = value.get(key)
    if not isinstance(raw, (int, float)) or isinstance(raw, bool) or not math.isfinite(raw) or not -1 <= raw <= 101:
        raise ValueError(f"{where}.value.{key}: expected a number of percent within 0..100")
    return min(max(float(raw), 0.0), 100.0)
