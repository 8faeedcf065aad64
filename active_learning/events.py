"""Label Studio's JSON (webhook bodies and API answers) read into checked, typed records.

Everything that can be wrong with a payload is found here and raised as ``ValueError`` naming the field
(``annotation.id: expected an integer, got 'x'``), so the store only ever sees clean records.
Rectangle results become pixel boxes: Label Studio sends percentages of ``original_width/height``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class ProjectRecord:
    id: int
    label_config: str | None
    title: str | None
    model_version: str | None


@dataclass(frozen=True)
class TaskRecord:
    id: int
    project_id: int
    data: dict[str, Any]


@dataclass(frozen=True)
class AnnotationRecord:
    id: int
    task_id: int
    project_id: int
    result: list[dict[str, Any]]
    boxes: list[dict[str, Any]]
    image_size: tuple[int, int] | None
    """``(original_width, original_height)`` from the result, when it has a region."""
    was_cancelled: bool
    completed_by: int | None
    lead_time: float | None
    created_at: datetime
    updated_at: datetime
    prediction: dict[str, Any] | None
    raw: dict[str, Any]


def parse_project(obj: Any, where: str = "project") -> ProjectRecord:
    obj = _dict(obj, where)
    return ProjectRecord(
        id=_int(obj, "id", where),
        label_config=_optional(obj, "label_config", str, where),
        title=_optional(obj, "title", str, where),
        model_version=_optional(obj, "model_version", str, where),
    )


def parse_task(obj: Any, project_id: int | None, where: str = "task") -> TaskRecord:
    obj = _dict(obj, where)
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise ValueError(f"{where}.data: expected an object, got {_kind(data)}")
    project = obj.get("project", project_id)
    if isinstance(project, dict):  # some API views nest the project
        project = project.get("id", project_id)
    if not isinstance(project, int) or isinstance(project, bool):
        raise ValueError(f"{where}.project: expected an integer, got {project!r}")
    return TaskRecord(id=_int(obj, "id", where), project_id=project, data=data)


def parse_annotation(obj: Any, project_id: int | None, where: str = "annotation") -> AnnotationRecord:
    """``project_id`` comes from the envelope when the annotation itself does not name its project."""
    obj = _dict(obj, where)
    task = obj.get("task")
    task_id = task.get("id") if isinstance(task, dict) else task
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise ValueError(f"{where}.task: expected a task id, got {task!r}")
    project = obj.get("project")
    if project is None:
        project = project_id
    if not isinstance(project, int) or isinstance(project, bool):
        raise ValueError(f"{where}.project: expected a project id, got {project!r}")
    result = obj.get("result") or []
    if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
        raise ValueError(f"{where}.result: expected a list of objects")
    created = _time(obj, "created_at", where, required=False)
    updated = _time(obj, "updated_at", where, required=created is None) or created
    prediction = obj.get("prediction")
    if prediction is not None and not isinstance(prediction, dict):
        raise ValueError(f"{where}.prediction: expected an object, got {_kind(prediction)}")
    boxes, size = boxes_from_result(result, f"{where}.result")
    completed_by = obj.get("completed_by")
    if isinstance(completed_by, dict):  # the API may expand the user
        completed_by = completed_by.get("id")
    lead_time = obj.get("lead_time")
    return AnnotationRecord(
        id=_int(obj, "id", where),
        task_id=task_id,
        project_id=project,
        result=result,
        boxes=boxes,
        image_size=size,
        was_cancelled=bool(obj.get("was_cancelled", False)),
        completed_by=completed_by if isinstance(completed_by, int) else None,
        lead_time=float(lead_time) if isinstance(lead_time, (int, float)) else None,
        created_at=created or updated,
        updated_at=updated,
        prediction=prediction or None,  # Label Studio sends {} when there was none
        raw=obj,
    )


def boxes_from_result(result: list[dict[str, Any]], where: str = "result",
                      size: tuple[int, int] | None = None) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
    """Pixel boxes ``{"label", "box": [x1, y1, x2, y2], "from_name"}`` of the ``rectanglelabels`` regions,
    and the image size the result gives (else ``size``, which also serves regions without one).

    A rotated rectangle (Label Studio rotates about its top-left corner) becomes its axis-aligned bounding
    box. One box per label when a region carries several. Other region types are skipped (kept raw).
    """
    boxes: list[dict[str, Any]] = []
    for i, region in enumerate(result):
        if "original_width" in region or "original_height" in region:
            width, height = region.get("original_width"), region.get("original_height")
            if not all(isinstance(v, (int, float)) and v > 0 for v in (width, height)):
                raise ValueError(f"{where}[{i}].original_width/height: expected positive numbers")
            size = (int(width), int(height))
        if region.get("type") != "rectanglelabels":
            continue
        value = region.get("value")
        if not isinstance(value, dict) or size is None:
            raise ValueError(f"{where}[{i}]: a rectanglelabels region needs value and original_width/height")
        try:
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
            rotation = float(value.get("rotation") or 0.0)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}[{i}].value: needs numeric x, y, width, height") from None
        labels = value.get("rectanglelabels") or []
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError(f"{where}[{i}].value.rectanglelabels: expected a list of strings")
        box = _pixel_box(x, y, w, h, rotation, size)
        for label in labels:
            boxes.append({"label": label, "box": box, "from_name": region.get("from_name")})
    return boxes, size


def rectangle_results(detections: Any, from_name: str, to_name: str, width: int, height: int) -> list[dict[str, Any]]:
    """The inverse of ``boxes_from_result``: pixel boxes (``supervision.Detections`` with
    ``data["class_name"]`` and, for predictions, ``confidence``) -> Label Studio rectangles in percent,
    clipped to the image."""
    regions = []
    scores = detections.confidence
    for i, (x1, y1, x2, y2) in enumerate(detections.xyxy.tolist()):
        x1, x2 = (min(max(v, 0.0), width) for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), height) for v in (y1, y2))
        if x2 <= x1 or y2 <= y1:
            continue
        region = {
            "id": f"r{i}",
            "from_name": from_name,
            "to_name": to_name,
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
                "rectanglelabels": [str(detections.data["class_name"][i])],
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


def parse_time(value: str) -> datetime:
    """Label Studio's ISO time (``2026-11-21T22:57:12.627505Z``) as naive UTC."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def ids_of(items: Any, where: str) -> list[int]:
    """``[{"id": 1}, {"id": 2}]`` (how Label Studio names deleted things) -> ``[1, 2]``."""
    if not isinstance(items, list):
        raise ValueError(f"{where}: expected a list of {{\"id\": ...}}, got {_kind(items)}")
    return [_int(_dict(item, f"{where}[{i}]"), "id", f"{where}[{i}]") for i, item in enumerate(items)]


def _dict(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {_kind(obj)}")
    return obj


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}.{key}: expected an integer, got {value!r}")
    return value


def _optional(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{where}.{key}: expected {kind.__name__}, got {_kind(value)}")
    return value


def _time(obj: dict[str, Any], key: str, where: str, *, required: bool) -> datetime | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: expected an ISO time, got {value!r}")
    try:
        return parse_time(value)
    except ValueError:
        raise ValueError(f"{where}.{key}: not an ISO time: {value!r}") from None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
