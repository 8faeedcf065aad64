"""Projects: Label Studio's project id, its label config (read as a ``ProjectSchema``), title, model_version and
the remembered interactive prompt."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from active_learning.labelstudio.records import ProjectRecord
from active_learning.store.database import Database
from active_learning.store.tables import Project, utcnow

if TYPE_CHECKING:
    from active_learning.labelstudio.config import ProjectSchema


class ProjectRepository:
    def __init__(self, db: Database):
        self.db = db

    def save(self, project: ProjectRecord) -> None:
        """Upsert what the record carries; fields it leaves None keep their stored value."""
        with self.db.write() as session:
            upsert_project(self.db, session, project)

    def set_label_config(self, project_id: int, label_config: str) -> None:
        self.save(ProjectRecord(project_id, label_config, None, None))

    def set_model_version(self, project_id: int, model_version: str) -> None:
        """Remember the project's ``model_version`` in Label Studio (after the backend changed it there)."""
        self.save(ProjectRecord(project_id, None, None, model_version))

    def set_prompt(self, project_id: int, prompt: str) -> None:
        with self.db.write() as session:
            upsert_project(self.db, session, ProjectRecord(project_id, None, None, None))
            session.execute(update(Project).where(Project.id == project_id).values(prompt=prompt))

    def get(self, project_id: int) -> Project | None:
        with self.db.read() as session:
            return session.get(Project, project_id)

    def ids(self) -> list[int]:
        with self.db.read() as session:
            return list(session.scalars(select(Project.id).order_by(Project.id)))

    def prompt(self, project_id: int) -> str | None:
        with self.db.read() as session:
            return session.scalar(select(Project.prompt).where(Project.id == project_id))

    def schema(self, project_id: int) -> ProjectSchema | None:
        """The project's schema from its stored label config; None when it has none or it cannot be used."""
        project = self.get(project_id)
        return schema_of(project.label_config) if project else None


def upsert_project(db: Database, session: Session, project: ProjectRecord) -> None:
    values: dict[str, Any] = {"id": project.id}
    if project.label_config is not None:
        values["label_config"] = project.label_config
    if project.title is not None:
        values["title"] = project.title
    if project.model_version is not None:
        values["model_version"] = project.model_version
    now = utcnow()
    insert = db.insert(Project).values({"label_config": "", "created_at": now, "updated_at": now, **values})
    changed = {key: getattr(insert.excluded, key) for key in values if key != "id"}
    if changed:
        changed["updated_at"] = insert.excluded.updated_at
        session.execute(insert.on_conflict_do_update(index_elements=[Project.id], set_=changed))
    else:
        session.execute(insert.on_conflict_do_nothing(index_elements=[Project.id]))


@functools.lru_cache(maxsize=64)
def schema_of(label_config: str) -> ProjectSchema | None:
    """The parsed config, or None for an empty or unusable one (parsed once per distinct config)."""
    # Imported here: label-studio-sdk's parser takes half a second to import, which `groundloop status` skips.
    from active_learning.labelstudio.config import LabelConfigError, parse_label_config

    try:
        return parse_label_config(label_config) if label_config else None
    except LabelConfigError:
        return None
