"""Label Studio's JSON (webhook bodies and API answers) read into checked, typed records.

Everything that can be wrong with a payload is found here and raised as ``ValueError`` naming the field
(``annotation.id: expected an integer, got 'x'``), so the store only ever sees clean records. An annotation's
rectangles become pixel boxes through ``regions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from active_learning.labelstudio.regions import boxes_from_result


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
