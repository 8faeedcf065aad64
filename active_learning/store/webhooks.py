"""Label Studio's webhook bodies applied to the store, one handler per action.

Every body is read into checked records first (``labelstudio.records``): a malformed one raises ValueError
naming the field, and nothing of it is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from active_learning.labelstudio.records import ProjectRecord, ids_of, parse_annotation, parse_project, parse_task
from active_learning.store.annotations import upsert_annotation
from active_learning.store.tasks import upsert_task

if TYPE_CHECKING:
    from active_learning.store import Store


@dataclass(frozen=True)
class IngestResult:
    action: str
    handled: bool
    message: str
    labeled_task_ids: tuple[int, ...] = ()
    """Tasks that got labels from this event: their images are worth caching now."""


def ingest(store: "Store", payload: Any) -> IngestResult:
    """Apply one webhook body. Unknown actions are acknowledged and ignored."""
    if not isinstance(payload, dict):
        raise ValueError(f"webhook body: expected a JSON object, got {type(payload).__name__}")
    action = payload.get("action")
    if not isinstance(action, str) or not action:
        raise ValueError("webhook body: 'action' is missing")
    handler = HANDLERS.get(action)
    if handler is None:
        return IngestResult(action, False, f"{action} ignored")
    message, labeled = handler(store, payload)
    return IngestResult(action, True, message, tuple(labeled))


def _annotation(store: "Store", payload: dict[str, Any]) -> tuple[str, list[int]]:
    project = _envelope_project(payload)
    annotation = parse_annotation(payload.get("annotation"), project.id if project else None)
    task = parse_task(payload.get("task"), annotation.project_id)
    store.annotations.save(project, task, annotation)
    if annotation.was_cancelled:
        return f"skip of task {task.id} recorded", []
    return f"annotation {annotation.id} of task {task.id} saved ({len(annotation.boxes)} boxes)", [task.id]


def _annotations_created(store: "Store", payload: dict[str, Any]) -> tuple[str, list[int]]:
    """The bulk form: ``annotation`` and ``task`` are lists."""
    project = _envelope_project(payload)
    annotations, tasks = payload.get("annotation"), payload.get("task")
    if not isinstance(annotations, list) or not isinstance(tasks, list):
        raise ValueError("ANNOTATIONS_CREATED: 'annotation' and 'task' must be lists")
    project_id = project.id if project else None
    parsed = [parse_annotation(a, project_id, f"annotation[{i}]") for i, a in enumerate(annotations)]
    by_id = {t.id: t for t in (parse_task(t, project_id, f"task[{i}]") for i, t in enumerate(tasks))}
    missing = [a for a in parsed if a.task_id not in by_id]
    if missing:
        raise ValueError(f"ANNOTATIONS_CREATED: task {missing[0].task_id} of annotation {missing[0].id} was not sent")
    with store.db.write() as session:
        for annotation in parsed:
            upsert_annotation(store.db, session, project, by_id[annotation.task_id], annotation)
    return f"{len(parsed)} annotations saved", sorted({a.task_id for a in parsed if not a.was_cancelled})


def _annotations_deleted(store: "Store", payload: dict[str, Any]) -> tuple[str, list[int]]:
    ids = ids_of(payload.get("annotations"), "annotations")
    return f"{store.annotations.mark_deleted(ids)} of {len(ids)} annotations marked deleted", []


def _tasks_created(store: "Store", payload: dict[str, Any]) -> tuple[str, list[int]]:
    project = _envelope_project(payload)
    tasks = payload.get("tasks")
    if not isinstance(tasks, list):
        raise ValueError("tasks: expected a list")
    parsed = [parse_task(t, project.id if project else None, f"tasks[{i}]") for i, t in enumerate(tasks)]
    with store.db.write() as session:
        for task in parsed:
            upsert_task(store.db, session, project, task)
    return f"{len(parsed)} tasks saved", []


def _tasks_deleted(store: "Store", payload: dict[str, Any]) -> tuple[str, list[int]]:
    ids = ids_of(payload.get("tasks"), "tasks")
    return f"{store.tasks.mark_deleted(ids)} of {len(ids)} tasks marked deleted", []


def _project_updated(store: "Store", payload: dict[str, Any]) -> tuple[str, list[int]]:
    project = _required_project(payload, "PROJECT_UPDATED")
    store.projects.save(project)
    return f"project {project.id} saved", []


def _start_training(store: "Store", payload: dict[str, Any]) -> tuple[str, list[int]]:
    project = _required_project(payload, "START_TRAINING")
    store.projects.save(project)
    run_id = store.runs.request(project.id, "webhook")
    return f"training run {run_id} queued for project {project.id}", []


def _envelope_project(payload: dict[str, Any]) -> ProjectRecord | None:
    return None if payload.get("project") is None else parse_project(payload["project"])


def _required_project(payload: dict[str, Any], action: str) -> ProjectRecord:
    project = _envelope_project(payload)
    if project is None:
        raise ValueError(f"{action}: 'project' is missing")
    return project


HANDLERS: dict[str, Callable[["Store", dict[str, Any]], tuple[str, list[int]]]] = {
    "ANNOTATION_CREATED": _annotation,
    "ANNOTATION_UPDATED": _annotation,
    "ANNOTATIONS_CREATED": _annotations_created,
    "ANNOTATIONS_DELETED": _annotations_deleted,
    "TASKS_CREATED": _tasks_created,
    "TASKS_DELETED": _tasks_deleted,
    "PROJECT_UPDATED": _project_updated,
    "START_TRAINING": _start_training,
}
