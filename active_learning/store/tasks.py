"""Tasks: Label Studio's task id and data, which image it shows (URL, cached content hash, size), and the
view training needs, each task's current human boxes (``labeled``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from active_learning.labelstudio.records import ProjectRecord, TaskRecord
from active_learning.store.database import Database
from active_learning.store.projects import schema_of, upsert_project
from active_learning.store.tables import Annotation, Project, Task, utcnow


@dataclass(frozen=True)
class LabeledTask:
    """A task's current human labels, as training and export need them."""

    task_id: int
    annotation_id: int
    image_url: str
    image_sha256: str | None
    width: int | None
    height: int | None
    boxes: list[dict[str, Any]]
    """``[{"label", "box": [x1, y1, x2, y2] in pixels, "from_name"}]``; empty means 'nothing here'."""
    data: dict[str, Any]
    """The task's ``data`` as Label Studio sent it."""
    result: list[dict[str, Any]] = field(default_factory=list)
    """The annotation's whole ``result``: a video's ``videorectangle`` regions are read from it."""


class TaskRepository:
    def __init__(self, db: Database):
        self.db = db

    def save(self, project: ProjectRecord | None, task: TaskRecord) -> None:
        with self.db.write() as session:
            upsert_task(self.db, session, project, task)

    def get(self, task_id: int) -> Task | None:
        with self.db.read() as session:
            return session.get(Task, task_id)

    def ids(self, project_id: int) -> list[int]:
        """Ids of the project's live tasks."""
        with self.db.read() as session:
            return list(session.scalars(
                select(Task.id).where(Task.project_id == project_id, Task.deleted.is_(False)).order_by(Task.id)
            ))

    def mark_deleted(self, ids: list[int]) -> int:
        """Mark these tasks and their annotations deleted (Label Studio deletes both); returns tasks known."""
        with self.db.write() as session:
            session.execute(update(Annotation).where(Annotation.task_id.in_(ids)).values(deleted=True))
            return session.execute(update(Task).where(Task.id.in_(ids)).values(deleted=True)).rowcount

    def record_image(self, task_id: int, sha256: str, width: int, height: int) -> None:
        """Note which cached image (``ImageCache.path_for(sha256)``) a task shows."""
        with self.db.write() as session:
            session.execute(
                update(Task).where(Task.id == task_id).values(image_sha256=sha256, width=width, height=height)
            )

    def labeled(self, project_id: int) -> list[LabeledTask]:
        """Each live task's newest live, not skipped annotation: the training set of the project."""
        query = (
            select(Annotation, Task)
            .join(Task, Task.id == Annotation.task_id)
            .where(
                Annotation.project_id == project_id,
                Annotation.deleted.is_(False),
                Annotation.was_cancelled.is_(False),
                Task.deleted.is_(False),
                Task.image_url.is_not(None),
            )
            .order_by(Task.id, Annotation.updated_at.desc(), Annotation.id.desc())
        )
        labeled: dict[int, LabeledTask] = {}
        with self.db.read() as session:
            for annotation, task in session.execute(query):
                if task.id not in labeled:
                    labeled[task.id] = LabeledTask(
                        task_id=task.id, annotation_id=annotation.id, image_url=task.image_url or "",
                        image_sha256=task.image_sha256, width=task.width, height=task.height,
                        boxes=annotation.boxes, data=task.data or {}, result=annotation.result or [],
                    )
        return list(labeled.values())


def upsert_task(db: Database, session: Session, project: ProjectRecord | None, task: TaskRecord,
                size: tuple[int, int] | None = None) -> None:
    if project is None or project.id != task.project_id:
        project = ProjectRecord(id=task.project_id, label_config=None, title=None, model_version=None)
    upsert_project(db, session, project)
    label_config = session.scalar(select(Project.label_config).where(Project.id == task.project_id))
    insert = db.insert(Task).values(
        id=task.id,
        project_id=task.project_id,
        data=task.data,
        image_url=image_url_of(task.data, label_config or ""),
        width=size[0] if size else None,
        height=size[1] if size else None,
        deleted=False,
        updated_at=utcnow(),
    )
    new = insert.excluded
    same_image = Task.image_url == new.image_url
    session.execute(
        insert.on_conflict_do_update(
            index_elements=[Task.id],
            set_={
                "project_id": new.project_id,
                "data": new.data,
                "image_url": new.image_url,
                # A new image URL means the cached hash and size no longer describe it.
                "image_sha256": case((same_image, Task.image_sha256), else_=None),
                "width": func.coalesce(new.width, case((same_image, Task.width), else_=None)),
                "height": func.coalesce(new.height, case((same_image, Task.height), else_=None)),
                "updated_at": new.updated_at,
            },
        )
    )


def image_url_of(data: dict[str, Any], label_config: str) -> str | None:
    """The task's image URL: the field the config's ``<Image value="$field">`` names, else ``image``, else
    the first string field."""
    schema = schema_of(label_config)
    if schema is not None and isinstance(data.get(schema.image_key), str):
        return data[schema.image_key]
    if isinstance(data.get("image"), str):
        return data["image"]
    return next((value for value in data.values() if isinstance(value, str)), None)
