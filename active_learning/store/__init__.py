"""The store: everything groundloop remembers, in SQLite (default) or PostgreSQL.

``Store`` is one connection and one repository per kind of record: ``store.projects``, ``store.tasks``,
``store.annotations``, ``store.predictions``, ``store.models`` (model versions) and ``store.runs`` (training
runs); ``store.ingest(body)`` applies a Label Studio webhook. Schema changes are Alembic migrations
(``migrations/``), applied when a Store is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from active_learning.store.annotations import AnnotationRepository
from active_learning.store.database import Database
from active_learning.store.models import ModelVersionRepository
from active_learning.store.predictions import PredictionRepository
from active_learning.store.projects import ProjectRepository
from active_learning.store.runs import TrainingRunRepository
from active_learning.store.tasks import LabeledTask, TaskRepository
from active_learning.store.webhooks import IngestResult, ingest

if TYPE_CHECKING:
    from active_learning.settings import Settings

__all__ = ["IngestResult", "LabeledTask", "Store"]


class Store:
    def __init__(self, database_url: str):
        """Connect to ``database_url`` (SQLite or PostgreSQL) and bring its schema to the latest migration."""
        self.db = Database(database_url)
        self.projects = ProjectRepository(self.db)
        self.tasks = TaskRepository(self.db)
        self.annotations = AnnotationRepository(self.db)
        self.predictions = PredictionRepository(self.db)
        self.models = ModelVersionRepository(self.db)
        self.runs = TrainingRunRepository(self.db)

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Store":
        return cls(settings.resolved_database_url)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def ingest(self, payload: Any) -> IngestResult:
        """Apply one Label Studio webhook body; ValueError naming the field when it is malformed."""
        return ingest(self, payload)

    def close(self) -> None:
        self.db.close()
