"""Label Studio regions <-> boxes: the one place where percent rectangles become pixel boxes and back.

Label Studio's rectangle ``value`` is ``x, y, width, height`` in percent of ``original_width/height`` (and a
rotation about the top-left corner); groundloop works in pixel corners ``[x1, y1, x2, y2]``. A stored box is
``{"label", "box": [x1, y1, x2, y2], "from_name"}``; detections are ``supervision.Detections`` with
``data["class_name"]`` (and ``confidence`` for predictions).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

MAX_PERCENT = 1000.0
"""Coordinates beyond ±1000 % of the image (or rotations beyond ±1000°) are no drawing, they are garbage."""
MAX_SIDE = 100_000
"""Pixels an image side may claim to have."""

if TYPE_CHECKING:
    import supervision as sv

    from active_learning.labelstudio.config import ProjectSchema, LabelsControl


def boxes_from_result(result: list[dict[str, Any]], where: str = "result",
                      size: tuple[int, int] | None = None) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
    """Pixel boxes of the ``rectanglelabels`` regions, and the image size the result gives (else ``size``, which
    also serves regions without one).

    A rotated rectangle becomes its axis-aligned bounding box. One box per label when a region carries several.
    Other region types are skipped (kept raw). Raises ValueError naming the region for anything malformed,
    non-finite numbers included.
    """
    boxes: list[dict[str, Any]] = []
    if not isinstance(result, list):
        raise ValueError(f"{where}: expected a list of regions")
    for i, region in enumerate(result):
        if not isinstance(region, dict):
            raise ValueError(f"{where}[{i}]: expected an object")
        if "original_width" in region or "original_height" in region:
            width, height = region.get("original_width"), region.get("original_height")
            if not all(_finite(v) and 0 < v <= MAX_SIDE for v in (width, height)):
                raise ValueError(f"{where}[{i}].original_width/height: expected positive numbers up to {MAX_SIDE}")
            size = (int(width), int(height))
        if region.get("type") != "rectanglelabels":
            continue
        value = region.get("value")
        if not isinstance(value, dict) or size is None:
            raise ValueError(f"{where}[{i}]: a rectanglelabels region needs value and original_width/height")
        try:
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
            rotation = float(value.get("rotation") or 0.0)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}[{i}].value: needs numeric x, y, width, height") from None
        if not all(math.isfinite(v) and abs(v) <= MAX_PERCENT for v in (x, y, w, h, rotation)) or w < 0 or h < 0:
            raise ValueError(f"{where}[{i}].value: x, y, width, height and rotation must be finite numbers within "
                             f"±{MAX_PERCENT:g} (percent of the image; degrees), width and height not negative")
        labels = value.get("rectanglelabels") or []
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError(f"{where}[{i}].value.rectanglelabels: expected a list of strings")
        box = _pixel_box(x, y, w, h, rotation, size)
        for label in labels:
            boxes.append({"label": label, "box": box, "from_name": region.get("from_name")})
    return boxes, size


def regions_from_detections(detections: "sv.Detections", schema: "ProjectSchema", width: int, height: int, *,
                            control: str | None = None,
                            threshold: Callable[["LabelsControl", str], float | None] | None = None,
                            ) -> list[dict[str, Any]]:
    """Detections -> Label Studio rectangles in percent, clipped to the image.

    Each detection becomes a region of every control that offers its label (a phrase no control offers, typed in
    an interactive prompt, goes to the first control), or of ``control`` alone when given. ``threshold(control,
    label)`` (a job's ``Job.threshold``) drops detections whose confidence does not exceed it, and every detection
    of a label it answers None for.
    """
    regions: list[dict[str, Any]] = []
    scores = detections.confidence
    for i, (x1, y1, x2, y2) in enumerate(detections.xyxy.tolist()):
        x1, x2 = (min(max(v, 0.0), width) for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), height) for v in (y1, y2))
        if x2 <= x1 or y2 <= y1:
            continue
        label = str(detections.data["class_name"][i])
        targets = [schema.control(control)] if control else schema.controls_with(label) or [schema.control()]
        for target in targets:
            bar = threshold(target, label) if threshold else -1.0
            if bar is None or (scores is not None and scores[i] <= bar):
                continue
            region = {
                "id": f"r{len(regions)}",
                "from_name": target.name,
                "to_name": schema.image_name,
                "type": "rectanglelabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "x": 100.0 * x1 / width,
                    "y": 100.0 * y1 / height,
                    "width": 100.0 * (x2 - x1) / width,
                    "height": 100.0 * (y2 - y1) / height,
                    "rotation": 0,
                    "rectanglelabels": [label],
                },
            }
            if scores is not None:
                region["score"] = float(scores[i])
            regions.append(region)
    return regions


def _pixel_box(x: float, y: float, w: float, h: float, rotation: float, size: tuple[int, int]) -> list[float]:
    sx, sy = size[0] / 100.0, size[1] / 100.0
    x, y, w, h = x * sx, y * sy, w * sx, h * sy
    if rotation:
        cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    else:
        xs, ys = [x, x + w], [y, y + h]
    return [
        round(max(0.0, min(xs)), 2),
        round(max(0.0, min(ys)), 2),
        round(min(float(size[0]), max(xs)), 2),
        round(min(float(size[1]), max(ys)), 2),
    ]




def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
