"""The database tables, as SQLAlchemy 2 typed ORM classes.

Label Studio's own ids are the primary keys of projects, tasks and annotations: they are unique within one
Label Studio, so a webhook, an API sync and a retry all land on the same row. Times are naive UTC.
Schema changes go through an Alembic migration in ``active_learning/store/migrations/versions/``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MODEL_STATUSES = ("candidate", "deployed", "rejected", "retired")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "rejected")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def check_status(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} {value!r}: expected one of {', '.join(allowed)}")


class Base(DeclarativeBase):
    # Named constraints keep migrations portable between SQLite and PostgreSQL.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    """Label Studio's project id."""
    title: Mapped[str | None] = mapped_column(String(512))
    label_config: Mapped[str] = mapped_column(Text, default="")
    model_version: Mapped[str | None] = mapped_column(String(255))
    """The project's ``model_version`` in Label Studio, as last seen."""
    prompt: Mapped[str | None] = mapped_column(Text)
    """The last interactive text prompt, remembered for the next one."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    """Label Studio's task id."""
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    image_url: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The task's ``data`` as Label Studio sent it."""
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    """Content hash of the cached image (see ``images.ImageCache``); None until it was fetched."""
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Annotation(Base):
    __tablename__ = "annotations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    """Label Studio's annotation id."""
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    boxes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """``[{"label", "box": [x1, y1, x2, y2] in pixels, "from_name"}]``: what training uses."""
    result: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """The full ``result`` as sent, other control types included (kept, not trained on)."""
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    """A skip: Label Studio sends it as an annotation with ``was_cancelled: true``."""
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_by: Mapped[int | None] = mapped_column(Integer)
    lead_time: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    """Label Studio's time of the last change: an older event never overwrites a newer one."""
    prediction: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """The prediction the annotator started from (``annotation.prediction``), when Label Studio sent one."""
    project_model_version: Mapped[str | None] = mapped_column(String(255))
    """The project's ``model_version`` when the annotation arrived: which served prediction it started from."""
    raw: Mapped[dict[str, Any]] = mapped_column(JSON)
    ingested_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Prediction(Base):
    """A prediction the backend served (also the cache /predict answers from)."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_lookup", "image_url", "model_version", "params_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int | None] = mapped_column(Integer, index=True)
    task_id: Mapped[int | None] = mapped_column(Integer, index=True)
    image_url: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str] = mapped_column(String(255))
    params_key: Mapped[str] = mapped_column(String(255))
    """A digest of everything besides the image that changes the answer (prompt, thresholds)."""
    result: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    score: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    """The version string Label Studio sees as ``model_version``."""
    project_id: Mapped[int | None] = mapped_column(Integer, index=True)
    path: Mapped[str] = mapped_column(Text)
    parent: Mapped[str | None] = mapped_column(String(255))
    """The version (or hub id) it was fine-tuned from."""
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    """candidate / deployed / rejected / retired."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (
        # At most one queued request per project: a second START_TRAINING joins the first.
        Index(
            "uq_training_runs_one_queued",
            "project_id",
            unique=True,
            sqlite_where=text("status = 'queued'"),
            postgresql_where=text("status = 'queued'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(Integer, index=True)
    trigger: Mapped[str] = mapped_column(String(64))
    """Why it was asked for: ``webhook`` (START_TRAINING), ``auto``, ``cli`` ..."""
    status: Mapped[str] = mapped_column(String(16), default="queued")
    """queued / running / succeeded / failed / rejected (trained, but not better than the deployed model)."""
    requested_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    train_size: Mapped[int | None] = mapped_column(Integer)
    val_size: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """Per-epoch metrics, appended as training goes."""
    model_version: Mapped[str | None] = mapped_column(String(255))
    """The candidate it produced."""
    error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    """A running run whose lease expired is taken as dead: one round at a time per project, crash-safe."""
