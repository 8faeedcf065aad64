"""The store: everything groundloop remembers, in SQLite (default) or PostgreSQL.

The web server (webhooks, /predict) and the trainer are separate processes writing the same database, so:
SQLite runs in WAL mode with a busy timeout and takes its write lock at the start of every write transaction
(``BEGIN IMMEDIATE``), and every write that could race is one atomic statement (``INSERT ... ON CONFLICT``).
Webhooks may come twice or out of order: an annotation row only ever moves forward in Label Studio's
``updated_at``, and a deleted one stays deleted.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, case, create_engine, event, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from active_learning.events import (
    AnnotationRecord,
    ProjectRecord,
    TaskRecord,
    ids_of,
    parse_annotation,
    parse_project,
    parse_task,
)
from active_learning.settings import Settings
from active_learning.tables import (
    MODEL_STATUSES,
    Annotation,
    ModelVersion,
    Prediction,
    Project,
    Task,
    TrainingRun,
    utcnow,
)


MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class IngestResult:
    action: str
    handled: bool
    message: str
    labeled_task_ids: tuple[int, ...] = ()
    """Tasks that got labels from this event: their images are worth caching now."""


@dataclass(frozen=True)
class LabeledTask:
    """A task's current human labels, as training needs them."""

    task_id: int
    annotation_id: int
    image_url: str
    image_sha256: str | None
    width: int | None
    height: int | None
    boxes: list[dict[str, Any]]
    """``[{"label", "box": [x1, y1, x2, y2] in pixels, "from_name"}]``; empty means 'nothing here'."""


class Store:
    def __init__(self, database_url: str):
        """Connect to ``database_url`` (SQLite or PostgreSQL) and bring its schema to the latest migration."""
        self.engine = make_engine(database_url)
        self.dialect = self.engine.dialect.name
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        migrate(self.engine)
        # A handler answers its message, or (message, ids of the tasks it labeled).
        self._handlers: dict[str, Callable[[dict[str, Any]], str | tuple[str, list[int]]]] = {
            "ANNOTATION_CREATED": self._on_annotation,
            "ANNOTATION_UPDATED": self._on_annotation,
            "ANNOTATIONS_CREATED": self._on_annotations_created,
            "ANNOTATIONS_DELETED": self._on_annotations_deleted,
            "TASKS_CREATED": self._on_tasks_created,
            "TASKS_DELETED": self._on_tasks_deleted,
            "PROJECT_UPDATED": self._on_project_updated,
            "START_TRAINING": self._on_start_training,
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        return cls(settings.resolved_database_url)

    def close(self) -> None:
        self.engine.dispose()

    # --- webhooks ------------------------------------------------------------------------------------

    def ingest(self, payload: dict) -> IngestResult:
        """Apply one Label Studio webhook body. Unknown actions are acknowledged and ignored.

        Raises ValueError, naming the field, when the body is malformed.
        """
        if not isinstance(payload, dict):
            raise ValueError(f"webhook body: expected a JSON object, got {type(payload).__name__}")
        action = payload.get("action")
        if not isinstance(action, str) or not action:
            raise ValueError("webhook body: 'action' is missing")
        handler = self._handlers.get(action)
        if handler is None:
            return IngestResult(action, False, f"{action} ignored")
        answer = handler(payload)
        message, labeled = answer if isinstance(answer, tuple) else (answer, ())
        return IngestResult(action, True, message, tuple(labeled))

    def _on_annotation(self, payload: dict[str, Any]) -> tuple[str, list[int]]:
        project = self._envelope_project(payload)
        annotation = parse_annotation(payload.get("annotation"), project.id if project else None)
        task = parse_task(payload.get("task"), annotation.project_id)
        with self._write() as session:
            self._save_annotation(session, project, task, annotation)
        if annotation.was_cancelled:
            return f"skip of task {task.id} recorded", []
        return f"annotation {annotation.id} of task {task.id} saved ({len(annotation.boxes)} boxes)", [task.id]

    def _on_annotations_created(self, payload: dict[str, Any]) -> tuple[str, list[int]]:
        """The bulk form: ``annotation`` and ``task`` are lists."""
        project = self._envelope_project(payload)
        annotations, tasks = payload.get("annotation"), payload.get("task")
        if not isinstance(annotations, list) or not isinstance(tasks, list):
            raise ValueError("ANNOTATIONS_CREATED: 'annotation' and 'task' must be lists")
        project_id = project.id if project else None
        parsed = [parse_annotation(a, project_id, f"annotation[{i}]") for i, a in enumerate(annotations)]
        by_id = {t.id: t for t in (parse_task(t, project_id, f"task[{i}]") for i, t in enumerate(tasks))}
        with self._write() as session:
            for annotation in parsed:
                if annotation.task_id not in by_id:
                    raise ValueError(f"ANNOTATIONS_CREATED: task {annotation.task_id} of annotation "
                                     f"{annotation.id} was not sent")
                self._save_annotation(session, project, by_id[annotation.task_id], annotation)
        labeled = sorted({a.task_id for a in parsed if not a.was_cancelled})
        return f"{len(parsed)} annotations saved", labeled

    def _on_annotations_deleted(self, payload: dict[str, Any]) -> str:
        ids = ids_of(payload.get("annotations"), "annotations")
        marked = self.mark_annotations_deleted(ids)
        return f"{marked} of {len(ids)} annotations marked deleted"

    def _on_tasks_created(self, payload: dict[str, Any]) -> str:
        project = self._envelope_project(payload)
        tasks = payload.get("tasks")
        if not isinstance(tasks, list):
            raise ValueError("tasks: expected a list")
        parsed = [parse_task(t, project.id if project else None, f"tasks[{i}]") for i, t in enumerate(tasks)]
        with self._write() as session:
            for task in parsed:
                self._save_task(session, project, task)
        return f"{len(parsed)} tasks saved"

    def _on_tasks_deleted(self, payload: dict[str, Any]) -> str:
        ids = ids_of(payload.get("tasks"), "tasks")
        marked = self.mark_tasks_deleted(ids)
        return f"{marked} of {len(ids)} tasks marked deleted"

    def _on_project_updated(self, payload: dict[str, Any]) -> str:
        project = self._envelope_project(payload)
        if project is None:
            raise ValueError("PROJECT_UPDATED: 'project' is missing")
        self.save_project(project)
        return f"project {project.id} saved"

    def _on_start_training(self, payload: dict[str, Any]) -> str:
        project = self._envelope_project(payload)
        if project is None:
            raise ValueError("START_TRAINING: 'project' is missing")
        self.save_project(project)
        run_id = self.request_training(project.id, "webhook")
        return f"training run {run_id} queued for project {project.id}"

    @staticmethod
    def _envelope_project(payload: dict[str, Any]) -> ProjectRecord | None:
        return None if payload.get("project") is None else parse_project(payload["project"])

    # --- the upserts everything goes through (webhooks and sync alike) ----------------------------------

    def save_annotation(self, project: ProjectRecord | None, task: TaskRecord, annotation: AnnotationRecord) -> None:
        with self._write() as session:
            self._save_annotation(session, project, task, annotation)

    def save_project(self, project: ProjectRecord) -> None:
        with self._write() as session:
            self._save_project(session, project)

    def save_task(self, project: ProjectRecord | None, task: TaskRecord) -> None:
        with self._write() as session:
            self._save_task(session, project, task)

    def _save_annotation(self, session: Session, project: ProjectRecord | None, task: TaskRecord,
                         annotation: AnnotationRecord) -> None:
        if task.id != annotation.task_id:
            raise ValueError(f"annotation {annotation.id} belongs to task {annotation.task_id}, not {task.id}")
        self._save_task(session, project, task, annotation.image_size)
        insert = self._insert(Annotation).values(
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

    def _save_task(self, session: Session, project: ProjectRecord | None, task: TaskRecord,
                   size: tuple[int, int] | None = None) -> None:
        if project is None or project.id != task.project_id:
            project = ProjectRecord(id=task.project_id, label_config=None, title=None, model_version=None)
        self._save_project(session, project)
        label_config = session.scalar(select(Project.label_config).where(Project.id == task.project_id))
        insert = self._insert(Task).values(
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

    def _save_project(self, session: Session, project: ProjectRecord) -> None:
        values: dict[str, Any] = {"id": project.id}
        if project.label_config is not None:
            values.update(label_config=project.label_config, classes=classes_of(project.label_config))
        if project.title is not None:
            values["title"] = project.title
        if project.model_version is not None:
            values["model_version"] = project.model_version
        now = utcnow()
        insert = self._insert(Project).values({"label_config": "", "created_at": now, "updated_at": now, **values})
        changed = {key: getattr(insert.excluded, key) for key in values if key != "id"}
        if changed:
            changed["updated_at"] = insert.excluded.updated_at
            session.execute(insert.on_conflict_do_update(index_elements=[Project.id], set_=changed))
        else:
            session.execute(insert.on_conflict_do_nothing(index_elements=[Project.id]))

    def mark_annotations_deleted(self, ids: list[int]) -> int:
        """Mark these annotations deleted; returns how many the store knew."""
        with self._write() as session:
            return session.execute(update(Annotation).where(Annotation.id.in_(ids)).values(deleted=True)).rowcount

    def mark_tasks_deleted(self, ids: list[int]) -> int:
        """Mark these tasks and their annotations deleted (Label Studio deletes both); returns tasks known."""
        with self._write() as session:
            session.execute(update(Annotation).where(Annotation.task_id.in_(ids)).values(deleted=True))
            return session.execute(update(Task).where(Task.id.in_(ids)).values(deleted=True)).rowcount

    # --- projects --------------------------------------------------------------------------------------

    def upsert_project(self, ls_project_id: int, label_config: str) -> None:
        with self._write() as session:
            self._save_project(session, ProjectRecord(ls_project_id, label_config, None, None))

    def get_project(self, ls_project_id: int) -> Project | None:
        with self._sessions() as session:
            return session.get(Project, ls_project_id)

    def project_ids(self) -> list[int]:
        with self._sessions() as session:
            return list(session.scalars(select(Project.id).order_by(Project.id)))

    def project_prompt(self, ls_project_id: int) -> str | None:
        with self._sessions() as session:
            return session.scalar(select(Project.prompt).where(Project.id == ls_project_id))

    def set_project_prompt(self, ls_project_id: int, prompt: str) -> None:
        with self._write() as session:
            self._save_project(session, ProjectRecord(ls_project_id, None, None, None))
            session.execute(update(Project).where(Project.id == ls_project_id).values(prompt=prompt))

    def set_project_model_version(self, ls_project_id: int, model_version: str) -> None:
        """Remember the project's ``model_version`` in Label Studio (after the backend changed it there)."""
        with self._write() as session:
            self._save_project(session, ProjectRecord(ls_project_id, None, None, model_version))

    # --- tasks and annotations -------------------------------------------------------------------------

    def get_task(self, task_id: int) -> Task | None:
        with self._sessions() as session:
            return session.get(Task, task_id)

    def task_ids(self, project_id: int) -> list[int]:
        """Ids of the project's live tasks."""
        with self._sessions() as session:
            return list(session.scalars(
                select(Task.id).where(Task.project_id == project_id, Task.deleted.is_(False)).order_by(Task.id)
            ))

    def get_annotation(self, annotation_id: int) -> Annotation | None:
        with self._sessions() as session:
            return session.get(Annotation, annotation_id)

    def annotations(self, project_id: int, *, include_deleted: bool = False) -> list[Annotation]:
        with self._sessions() as session:
            query = select(Annotation).where(Annotation.project_id == project_id).order_by(Annotation.id)
            if not include_deleted:
                query = query.where(Annotation.deleted.is_(False))
            return list(session.scalars(query))

    def count_annotations(self, project_id: int, since: datetime | None = None) -> int:
        """Live, not skipped annotations of the project; with ``since``, those that arrived or changed after it."""
        query = select(func.count()).select_from(Annotation).where(
            Annotation.project_id == project_id, Annotation.deleted.is_(False), Annotation.was_cancelled.is_(False)
        )
        if since is not None:
            query = query.where(Annotation.ingested_at > since)
        with self._sessions() as session:
            return session.scalar(query) or 0

    def labeled_tasks(self, project_id: int) -> list[LabeledTask]:
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
        with self._sessions() as session:
            for annotation, task in session.execute(query):
                if task.id not in labeled:
                    labeled[task.id] = LabeledTask(
                        task_id=task.id,
                        annotation_id=annotation.id,
                        image_url=task.image_url or "",
                        image_sha256=task.image_sha256,
                        width=task.width,
                        height=task.height,
                        boxes=annotation.boxes,
                    )
        return list(labeled.values())

    def record_task_image(self, task_id: int, sha256: str, width: int, height: int) -> None:
        """Note which cached image (``ImageCache.path_for(sha256)``) a task shows."""
        with self._write() as session:
            session.execute(
                update(Task).where(Task.id == task_id).values(image_sha256=sha256, width=width, height=height)
            )

    # --- predictions the backend served ----------------------------------------------------------------

    def find_prediction(self, image_url: str, model_version: str, params_key: str) -> dict | None:
        query = (
            select(Prediction)
            .where(Prediction.image_url == image_url, Prediction.model_version == model_version,
                   Prediction.params_key == params_key)
            .order_by(Prediction.created_at.desc(), Prediction.id.desc())
            .limit(1)
        )
        with self._sessions() as session:
            found = session.scalar(query)
        if found is None:
            return None
        return {"result": found.result, "score": found.score, "model_version": found.model_version}

    def save_prediction(self, *, project_id: int | None, task_id: int | None, image_url: str, model_version: str,
                        params_key: str, result: list, score: float) -> None:
        with self._write() as session:
            session.add(Prediction(project_id=project_id, task_id=task_id, image_url=image_url,
                                   model_version=model_version, params_key=params_key, result=result,
                                   score=float(score), created_at=utcnow()))

    def served_predictions(self, task_id: int, model_version: str | None = None,
                           before: datetime | None = None) -> list[Prediction]:
        """Predictions served for a task, newest first; optionally of one model version, served before a time."""
        query = select(Prediction).where(Prediction.task_id == task_id)
        if model_version is not None:
            query = query.where(Prediction.model_version == model_version)
        if before is not None:
            query = query.where(Prediction.created_at <= before)
        with self._sessions() as session:
            return list(session.scalars(query.order_by(Prediction.created_at.desc(), Prediction.id.desc())))

    # --- model versions --------------------------------------------------------------------------------

    def add_model_version(self, name: str, path: str | Path, *, project_id: int | None = None,
                          parent: str | None = None, metrics: dict | None = None,
                          status: str = "candidate") -> ModelVersion:
        _check(status, MODEL_STATUSES, "model status")
        with self._write() as session:
            model = ModelVersion(name=name, path=str(path), project_id=project_id, parent=parent,
                                 metrics=metrics or {}, status="candidate", created_at=utcnow())
            session.add(model)
        if status != "candidate":
            return self.set_model_status(name, status)
        return model

    def set_model_status(self, name: str, status: str, metrics: dict | None = None) -> ModelVersion:
        """Change a version's status; deploying one retires the project's previously deployed version."""
        _check(status, MODEL_STATUSES, "model status")
        with self._write() as session:
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

    def get_model_version(self, name: str) -> ModelVersion | None:
        with self._sessions() as session:
            return session.scalar(select(ModelVersion).where(ModelVersion.name == name))

    def deployed_model(self, project_id: int | None) -> ModelVersion | None:
        with self._sessions() as session:
            return session.scalar(
                select(ModelVersion)
                .where(ModelVersion.status == "deployed", _of_project(project_id))
                .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
                .limit(1)
            )

    def model_versions(self, project_id: int | None = None) -> list[ModelVersion]:
        query = select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)
        if project_id is not None:
            query = query.where(ModelVersion.project_id == project_id)
        with self._sessions() as session:
            return list(session.scalars(query))

    # --- training runs ---------------------------------------------------------------------------------

    def request_training(self, ls_project_id: int, trigger: str) -> int:
        """Queue a training round; while one is already queued for the project, return that one's id."""
        with self._write() as session:
            self._save_project(session, ProjectRecord(ls_project_id, None, None, None))
            session.execute(
                self._insert(TrainingRun)
                .values(project_id=ls_project_id, trigger=trigger, status="queued", requested_at=utcnow(), epochs=[])
                .on_conflict_do_nothing(index_elements=[TrainingRun.project_id],
                                        index_where=TrainingRun.status == "queued")
            )
            return session.scalar(
                select(TrainingRun.id).where(TrainingRun.project_id == ls_project_id, TrainingRun.status == "queued")
            )

    def claim_training_run(self, owner: str, lease_seconds: float = 300.0,
                           project_id: int | None = None) -> TrainingRun | None:
        """Start the oldest queued run of a project that has no live running run; None if there is none.

        A running run whose lease ran out is marked failed first: its trainer died. Keep a claimed run
        alive with ``renew_lease`` more often than ``lease_seconds``.
        """
        now = utcnow()
        with self._write() as session:
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.status == "running", TrainingRun.lease_expires_at < now)
                .values(status="failed", finished_at=now, error="lease expired: the trainer stopped", lease_owner=None)
            )
            busy = select(TrainingRun.project_id).where(TrainingRun.status == "running").scalar_subquery()
            candidates = select(TrainingRun.id).where(TrainingRun.status == "queued",
                                                      TrainingRun.project_id.not_in(busy))
            if project_id is not None:
                candidates = candidates.where(TrainingRun.project_id == project_id)
            for run_id in session.scalars(candidates.order_by(TrainingRun.requested_at, TrainingRun.id)):
                claimed = session.execute(
                    update(TrainingRun)
                    .where(TrainingRun.id == run_id, TrainingRun.status == "queued")
                    .values(status="running", started_at=now, lease_owner=owner,
                            lease_expires_at=now + timedelta(seconds=lease_seconds))
                ).rowcount
                if claimed:
                    return session.get(TrainingRun, run_id)
        return None

    def renew_lease(self, run_id: int, owner: str, lease_seconds: float = 300.0) -> bool:
        """Extend a running run's lease; False if this owner no longer holds it (stop training then)."""
        with self._write() as session:
            return bool(session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id, TrainingRun.status == "running", TrainingRun.lease_owner == owner)
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            ).rowcount)

    def update_training_run(self, run_id: int, *, train_size: int | None = None, val_size: int | None = None,
                            epoch: dict | None = None) -> None:
        """Record dataset sizes and/or append one epoch's metrics."""
        with self._write() as session:
            run = self._run(session, run_id)
            if train_size is not None:
                run.train_size = train_size
            if val_size is not None:
                run.val_size = val_size
            if epoch is not None:
                run.epochs = [*run.epochs, epoch]

    def finish_training_run(self, run_id: int, status: str, *, model_version: str | None = None,
                            error: str | None = None) -> None:
        """End a run: ``succeeded`` (candidate promoted), ``rejected`` (not better) or ``failed`` (``error``)."""
        _check(status, ("succeeded", "failed", "rejected"), "final run status")
        with self._write() as session:
            run = self._run(session, run_id)
            run.status, run.finished_at, run.lease_owner, run.lease_expires_at = status, utcnow(), None, None
            if model_version is not None:
                run.model_version = model_version
            if error is not None:
                run.error = error

    def get_training_run(self, run_id: int) -> TrainingRun | None:
        with self._sessions() as session:
            return session.get(TrainingRun, run_id)

    def training_runs(self, project_id: int) -> list[TrainingRun]:
        """The project's runs, newest first."""
        with self._sessions() as session:
            return list(session.scalars(
                select(TrainingRun).where(TrainingRun.project_id == project_id)
                .order_by(TrainingRun.requested_at.desc(), TrainingRun.id.desc())
            ))

    @staticmethod
    def _run(session: Session, run_id: int) -> TrainingRun:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise KeyError(f"no training run {run_id}")
        return run

    # --- plumbing --------------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction; on SQLite it holds the write lock from its first statement."""
        with self._sessions() as session, session.begin():
            session.connection(execution_options={"write": True})
            yield session

    def _insert(self, table: type) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)


def make_engine(database_url: str) -> Engine:
    """An engine for SQLite (WAL, busy timeout, immediate write transactions) or PostgreSQL."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        return create_engine(url, pool_pre_ping=True)
    if url.get_backend_name() != "sqlite":
        raise ValueError(f"DATABASE_URL {url.render_as_string()!r}: only sqlite:// and postgresql:// are supported")
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Taking the write lock up front makes a writer wait (busy_timeout) instead of failing when another
        # process committed between its read and its write.
        write = connection.get_execution_options().get("write")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration not yet applied; safe when several processes start together."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect().execution_options(write=True) as connection, connection.begin():
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(74657)")  # one migrator at a time
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def image_url_of(data: dict[str, Any], label_config: str) -> str | None:
    """The task's image URL: the field the config's ``<Image value="$field">`` names, else ``image``, else
    the first string field."""
    schema = _schema(label_config)
    for control in schema.rectangle_controls if schema else []:
        value = data.get(control.image_value_key)
        if isinstance(value, str):
            return value
    if isinstance(data.get("image"), str):
        return data["image"]
    return next((value for value in data.values() if isinstance(value, str)), None)


def classes_of(label_config: str) -> list[dict[str, Any]] | None:
    """``[{"name", "aliases", "control"}]`` of the config's RectangleLabels; None if it cannot be parsed."""
    schema = _schema(label_config)
    if schema is None:
        return None
    return [
        {"name": spec.name, "aliases": list(spec.aliases), "control": control.name}
        for control in schema.rectangle_controls
        for spec in control.classes
    ]


@functools.lru_cache(maxsize=16)
def _schema(label_config: str) -> Any:
    """The parsed config (``label_config.LabelSchema``), or None for an empty or unusable one."""
    from active_learning.label_config import LabelConfigError, parse_label_config

    try:
        return parse_label_config(label_config) if label_config else None
    except LabelConfigError:
        return None


def _of_project(project_id: int | None) -> Any:
    return ModelVersion.project_id.is_(None) if project_id is None else ModelVersion.project_id == project_id


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} {value!r}: expected one of {', '.join(allowed)}")
