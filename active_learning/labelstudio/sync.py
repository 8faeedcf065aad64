"""``groundloop sync``: make the store hold exactly what Label Studio holds for a project (recovers webhooks
missed while the backend was down; the worker runs it before every round)."""

from __future__ import annotations

from dataclasses import dataclass, field

from active_learning.labelstudio.client import LabelStudioClient, LabelStudioError
from active_learning.labelstudio.records import parse_annotation, parse_project, parse_task
from active_learning.store import Store


@dataclass(frozen=True)
class SyncResult:
    project_id: int
    tasks: int
    annotations: int
    tasks_deleted: int
    annotations_deleted: int
    errors: list[str] = field(default_factory=list)
    """One line per task or annotation Label Studio returned that could not be read (left as they were)."""


def sync_project(store: Store, client: LabelStudioClient, project_id: int) -> SyncResult:
    """Make the store hold exactly what Label Studio holds for the project.

    Pulls the project, every task and every annotation through the API and upserts them (recovering webhooks
    missed while the backend was down); tasks and annotations the store has but Label Studio no longer has
    are marked deleted.
    """
    try:
        project = parse_project(client.get_project(project_id))
        tasks = client.tasks_with_annotations(project_id)
    except Exception as exc:  # the SDK raises its ApiError, httpx errors and pydantic errors alike
        raise LabelStudioError(f"cannot read project {project_id} from Label Studio: {exc}".splitlines()[0]) from None

    store.projects.save(project)
    seen_tasks: set[int] = set()
    seen_annotations: set[int] = set()
    errors: list[str] = []
    for raw_task in tasks:
        seen_tasks.add(raw_task.get("id"))
        annotations = raw_task.get("annotations") or []
        seen_annotations.update(a.get("id") for a in annotations)
        try:
            task = parse_task(raw_task, project.id)
        except ValueError as exc:
            errors.append(f"task {raw_task.get('id')}: {exc}")
            continue
        if not annotations:
            store.tasks.save(project, task)
        for raw_annotation in annotations:
            try:
                annotation = parse_annotation({**raw_annotation, "task": task.id}, project.id)
            except ValueError as exc:
                errors.append(f"annotation {raw_annotation.get('id')}: {exc}")
                continue
            store.annotations.save(project, task, annotation)

    # Imported labels (negative ids, see tools/importing.py) never were in Label Studio: they are not "gone".
    gone_annotations = [a.id for a in store.annotations.of_project(project_id) if a.id > 0 and a.id not in seen_annotations]
    gone_tasks = [task_id for task_id in store.tasks.ids(project_id) if task_id > 0 and task_id not in seen_tasks]
    store.annotations.mark_deleted(gone_annotations)
    store.tasks.mark_deleted(gone_tasks)
    return SyncResult(project_id, len(seen_tasks), len(seen_annotations), len(gone_tasks), len(gone_annotations),
                      errors)
