"""Predictions the backend served: what annotators started from, and the cache /predict answers from (keyed by
image URL, model version and the job's ``params_key``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from active_learning.store.database import Database
from active_learning.store.tables import Prediction, utcnow


class PredictionRepository:
    def __init__(self, db: Database):
        self.db = db

    def find(self, image_url: str, model_version: str, params_key: str) -> dict | None:
        """``{"result", "score", "model_version"}`` of the newest such prediction, if any."""
        query = (
            select(Prediction)
            .where(Prediction.image_url == image_url, Prediction.model_version == model_version,
                   Prediction.params_key == params_key)
            .order_by(Prediction.created_at.desc(), Prediction.id.desc())
            .limit(1)
        )
        with self.db.read() as session:
            found = session.scalar(query)
        if found is None:
            return None
        return {"result": found.result, "score": found.score, "model_version": found.model_version}

    def save(self, *, project_id: int | None, task_id: int | None, image_url: str, model_version: str,
             params_key: str, result: list, score: float) -> None:
        with self.db.write() as session:
            session.add(Prediction(project_id=project_id, task_id=task_id, image_url=image_url,
                                   model_version=model_version, params_key=params_key, result=result,
                                   score=float(score), created_at=utcnow()))

    def served(self, task_id: int, model_version: str | None = None,
               before: datetime | None = None) -> list[Prediction]:
        """Predictions served for a task, newest first; optionally of one model version, served before a time."""
        query = select(Prediction).where(Prediction.task_id == task_id)
        if model_version is not None:
            query = query.where(Prediction.model_version == model_version)
        if before is not None:
            query = query.where(Prediction.created_at <= before)
        with self.db.read() as session:
            return list(session.scalars(query.order_by(Prediction.created_at.desc(), Prediction.id.desc())))
