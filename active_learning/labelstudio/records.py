"""Label Studio's JSON (webhook bodies and API answers) read into checked, typed records.

Everything that can be wrong with a payload is found here and raised as ``ValueError`` naming the field
(``annotation.id: expected an integer, got 'x'``), so the store only ever sees clean records. An annotation's
rectangles become pixel boxes through ``regions``.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from datetime import datetime, timezone
from typing import Any

from active_learning.labelstudio.regions import boxes_from_result

MAX_ID = 2**31
MAX_REGIONS = 10_000
"""Regions one annotation or prediction may hold: far beyond any human's, short of exhausting memory."""


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
    return TaskRecord(id=_int(obj, "id", where), project_id=check_id(project, f"{where}.project"), data=data)


def parse_annotation(obj: Any, project_id: int | None, where: str = "annotation") -> AnnotationRecord:
    """``project_id`` comes from the envelope when the annotation itself does not name its project."""
    obj = _dict(obj, where)
    task = obj.get("task")
    task_id = check_id(task.get("id") if isinstance(task, dict) else task, f"{where}.task")
    project = check_id(project_id if obj.get("project") is None else obj["project"], f"{where}.project")
    result = _regions(obj.get("result") or [], f"{where}.result")
    created = _time(obj, "created_at", where, required=False)
    updated = _time(obj, "updated_at", where, required=created is None) or created
    prediction = _prediction(obj.get("prediction"), f"{where}.prediction")
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
        completed_by=completed_by if isinstance(completed_by, int) and 0 < completed_by < MAX_ID else None,
        lead_time=float(lead_time) if _finite(lead_time) else None,
        created_at=created or updated,
        updated_at=updated,
        prediction=prediction,
        raw=obj,
    )


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


def check_id(value: Any, where: str) -> int:
    """A Label Studio id: a positive integer below 2**31 (Label Studio's ids, and the store's INTEGER columns)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < MAX_ID:
        raise ValueError(f"{where}: expected a positive integer id below 2**31, got {_clip(value)}")
    return value


def _regions(result: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
        raise ValueError(f"{where}: expected a list of objects")
    if len(result) > MAX_REGIONS:
        raise ValueError(f"{where}: {len(result)} regions, more than the {MAX_REGIONS} groundloop accepts")
    return result


def _prediction(prediction: Any, where: str) -> dict[str, Any] | None:
    """The prediction an annotation started from, checked so that nothing stored can break statistics later."""
    if prediction is None or prediction == {}:  # Label Studio sends {} when there was none
        return None
    prediction = _dict(prediction, where)
    _regions(prediction.get("result") or [], f"{where}.result")
    _optional(prediction, "model_version", str, where)
    return prediction


def _clip(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dict(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {_kind(obj)}")
    return obj


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    return check_id(obj.get(key), f"{where}.{key}")


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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
