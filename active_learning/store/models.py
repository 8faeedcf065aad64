"""Model versions: every fine-tuned checkpoint a round produced, its path, parent, metrics and status
(candidate, deployed, rejected, retired). At most one version per project is deployed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from active_learning.store.database import Database
from active_learning.store.tables import MODEL_STATUSES, ModelVersion, utcnow, check_status


class ModelVersionRepository:
    def __init__(self, db: Database):
        self.db = db

    def add(self, name: str, path: str | Path, *, project_id: int | None = None, parent: str | None = None,
            metrics: dict | None = None, status: str = "candidate") -> ModelVersion:
        check_status(status, MODEL_STATUSES, "model status")
        with self.db.write() as session:
            model = ModelVersion(name=name, path=str(path), project_id=project_id, parent=parent,
                                 metrics=metrics or {}, status="candidate", created_at=utcnow())
            session.add(model)
        if status != "candidate":
            return self.set_status(name, status)
        return model

    def set_status(self, name: str, status: str, metrics: dict | None = None) -> ModelVersion:
        """Change a version's status; deploying one retires the project's previously deployed version."""
        check_status(status, MODEL_STATUSES, "model status")
        with self.db.write() as session:
            model = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
            if model is None:
                raise KeyError(f"no model version {name!r}")
            if status == "deployed":
                session.execute(
                    update(ModelVersion)
                    .where(_of_project(model.project_id), ModelVersion.status == "deployed",
                           ModelVersion.id != model.id)
                    .values(status="retired")
                )
            model.status = status
            if metrics is not None:
                model.metrics = metrics
        return model

    def get(self, name: str) -> ModelVersion | None:
        with self.db.read() as session:
            return session.scalar(select(ModelVersion).where(ModelVersion.name == name))

    def deployed(self, project_id: int | None) -> ModelVersion | None:
        with self.db.read() as session:
            return session.scalar(
                select(ModelVersion)
                .where(ModelVersion.status == "deployed", _of_project(project_id))
                .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
                .limit(1)
            )

    def versions(self, project_id: int | None = None) -> list[ModelVersion]:
        """Oldest first; all projects' when ``project_id`` is None."""
        query = select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)
        if project_id is not None:
            query = query.where(ModelVersion.project_id == project_id)
        with self.db.read() as session:
            return list(session.scalars(query))


def _of_project(project_id: int | None) -> Any:
    return ModelVersion.project_id.is_(None) if project_id is None else ModelVersion.project_id == project_id
