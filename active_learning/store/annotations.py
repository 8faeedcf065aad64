"""Annotations: Label Studio's annotations (skips included) with their boxes in pixels, the prediction each
started from, and the project's model_version when it arrived.

Webhooks may come twice or out of order: a row only ever moves forward in Label Studio's ``updated_at``, and a
deleted one stays deleted.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from active_learning.labelstudio.records import AnnotationRecord, ProjectRecord, TaskRecord
from active_learning.store.database import Database
from active_learning.store.tables import Annotation, utcnow
from active_learning.store.tasks import upsert_task


class AnnotationRepository:
    def __init__(self, db: Database):
        self.db = db

    def save(self, project: ProjectRecord | None, task: TaskRecord, annotation: AnnotationRecord) -> None:
        """Upsert the annotation with its task (and project) in one transaction."""
        with self.db.write() as session:
            upsert_annotation(self.db, session, project, task, annotation)

    def get(self, annotation_id: int) -> Annotation | None:
        with self.db.read() as session:
            return session.get(Annotation, annotation_id)

    def of_project(self, project_id: int, *, include_deleted: bool = False) -> list[Annotation]:
        with self.db.read() as session:
            query = select(Annotation).where(Annotation.project_id == project_id).order_by(Annotation.id)
            if not include_deleted:
                query = query.where(Annotation.deleted.is_(False))
            return list(session.scalars(query))

    def count(self, project_id: int, since: datetime | None = None) -> int:
        """Live, not skipped annotations of the project; with ``since``, those that arrived or changed after it."""
        query = select(func.count()).select_from(Annotation).where(
            Annotation.project_id == project_id, Annotation.deleted.is_(False), Annotation.was_cancelled.is_(False)
        )
        if since is not None:
            query = query.where(Annotation.ingested_at > since)
        with self.db.read() as session:
            return session.scalar(query) or 0

    def state(self, project_id: int) -> tuple:
        """(live annotations, newest arrival) of the project: changes whenever its labels may have."""
        query = select(func.count(), func.max(Annotation.ingested_at)).where(
            Annotation.project_id == project_id, Annotation.deleted.is_(False))
        with self.db.read() as session:
            return tuple(session.execute(query).one())

    def mark_deleted(self, ids: list[int]) -> int:
        """Mark these annotations deleted; returns how many the store knew."""
        with self.db.write() as session:
            return session.execute(update(Annotation).where(Annotation.id.in_(ids)).values(deleted=True)).rowcount


def upsert_annotation(db: Database, session: Session, project: ProjectRecord | None, task: TaskRecord,
                      annotation: AnnotationRecord) -> None:
    if task.id != annotation.task_id:
        raise ValueError(f"annotation {annotation.id} belongs to task {annotation.task_id}, not {task.id}")
    upsert_task(db, session, project, task, annotation.image_size)
    insert = db.insert(Annotation).values(
        id=annotation.id,
        task_id=annotation.task_id,
        project_id=task.project_id,
        boxes=annotation.boxes,
        result=annotation.result,
        was_cancelled=annotation.was_cancelled,
        deleted=False,
        completed_by=annotation.completed_by,
        lead_time=annotation.lead_time,
        created_at=annotation.created_at,
        updated_at=annotation.updated_at,
        prediction=annotation.prediction,
        project_model_version=project.model_version if project else None,
        raw=annotation.raw,
        ingested_at=utcnow(),
    )
    new = insert.excluded
    session.execute(
        insert.on_conflict_do_update(
            index_elements=[Annotation.id],
            # Equal times re-apply the same event (harmless); an older event changes nothing. The
            # prediction it started from and the project's model version at creation are kept.
            where=Annotation.updated_at <= new.updated_at,
            set_={
                "task_id": new.task_id,
                "project_id": new.project_id,
                "boxes": new.boxes,
                "result": new.result,
                "was_cancelled": new.was_cancelled,
                "completed_by": new.completed_by,
                "lead_time": new.lead_time,
                "created_at": new.created_at,
                "updated_at": new.updated_at,
                "prediction": func.coalesce(Annotation.prediction, new.prediction),
                "project_model_version": func.coalesce(Annotation.project_model_version, new.project_model_version),
                "raw": new.raw,
                "ingested_at": new.ingested_at,
            },
        )
    )
