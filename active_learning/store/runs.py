"""Training runs: a queue of rounds per project (at most one queued), each claimed under a lease so that one
round per project runs at a time, however many workers there are, and a dead worker's round is failed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from active_learning.labelstudio.records import ProjectRecord
from active_learning.store.database import Database
from active_learning.store.projects import upsert_project
from active_learning.store.tables import TrainingRun, check_status, utcnow


class TrainingRunRepository:
    def __init__(self, db: Database):
        self.db = db

    def request(self, project_id: int, trigger: str) -> int:
        """Queue a training round; while one is already queued for the project, return that one's id."""
        with self.db.write() as session:
            upsert_project(self.db, session, ProjectRecord(project_id, None, None, None))
            session.execute(
                self.db.insert(TrainingRun)
                .values(project_id=project_id, trigger=trigger, status="queued", requested_at=utcnow(), epochs=[])
                .on_conflict_do_nothing(index_elements=[TrainingRun.project_id],
                                        index_where=TrainingRun.status == "queued")
            )
            return session.scalar(
                select(TrainingRun.id).where(TrainingRun.project_id == project_id, TrainingRun.status == "queued")
            )

    def claim(self, owner: str, lease_seconds: float = 300.0,
                           project_id: int | None = None) -> TrainingRun | None:
        """Start the oldest queued run of a project that has no live running run; None if there is none.

        A running run whose lease ran out is marked failed first: its trainer died. Keep a claimed run
        alive with ``renew_lease`` more often than ``lease_seconds``.
        """
        now = utcnow()
        with self.db.write() as session:
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
        with self.db.write() as session:
            return bool(session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id, TrainingRun.status == "running", TrainingRun.lease_owner == owner)
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            ).rowcount)

    def update(self, run_id: int, *, train_size: int | None = None, val_size: int | None = None,
                            epoch: dict | None = None) -> None:
        """Record dataset sizes and/or append one epoch's metrics."""
        with self.db.write() as session:
            run = _run(session, run_id)
            if train_size is not None:
                run.train_size = train_size
            if val_size is not None:
                run.val_size = val_size
            if epoch is not None:
                run.epochs = [*run.epochs, epoch]

    def finish(self, run_id: int, status: str, *, model_version: str | None = None,
                            error: str | None = None) -> None:
        """End a run: ``succeeded`` (candidate promoted), ``rejected`` (not better) or ``failed`` (``error``)."""
        check_status(status, ("succeeded", "failed", "rejected"), "final run status")
        with self.db.write() as session:
            run = _run(session, run_id)
            run.status, run.finished_at, run.lease_owner, run.lease_expires_at = status, utcnow(), None, None
            if model_version is not None:
                run.model_version = model_version
            if error is not None:
                run.error = error

    def get(self, run_id: int) -> TrainingRun | None:
        with self.db.read() as session:
            return session.get(TrainingRun, run_id)

    def of_project(self, project_id: int) -> list[TrainingRun]:
        """The project's runs, newest first."""
        with self.db.read() as session:
            return list(session.scalars(
                select(TrainingRun).where(TrainingRun.project_id == project_id)
                .order_by(TrainingRun.requested_at.desc(), TrainingRun.id.desc())
            ))


def _run(session: Session, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise KeyError(f"no training run {run_id}")
    return run
