"""The training worker: a process beside the web server that schedules and runs training rounds.

Rounds are asked for by the START_TRAINING webhook, by ``groundloop train``, and by the schedule here: a
project gets a round when at least ``train_min_new_annotations`` annotations arrived or changed since its
last round and ``train_min_interval_minutes`` passed; a project with label groups gets a classifier round (its
heads alone, in seconds) after ``classifier_min_new_annotations`` between them. Claiming a round takes a lease in the database, so
any number of workers can run and still never train one project twice at once.

After a round deployed a new version, the worker predicts the project's unlabeled tasks with it and hands the
predictions to Label Studio, then points the project's ``model_version`` at it: annotators (and uncertainty
sampling) see the new model's boxes without asking. The web servers pick the new version up on their own.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from datetime import timedelta
from typing import Callable

from active_learning.labelstudio.client import LabelStudioClient
from active_learning.labelstudio.sync import sync_project
from active_learning.serving.pool import LoadedModel, serving_model
from active_learning.serving.publish import publish_to_label_studio
from active_learning.settings import Settings
from active_learning.store import Store
from active_learning.store.tables import utcnow
from active_learning.training.rounds import CLASSIFY, MEASURE, RoundOutcome, run_round
from model.training import EpochResult

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, store: Store | None = None, owner: str | None = None):
        self.settings = settings
        self.store = store or Store.from_settings(settings)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"

    def schedule_due_rounds(self) -> list[int]:
        """Queue a round for every project with enough new annotations and enough time since its last training
        round; else a measuring round for a project still served by the starting model, unmeasured, once it has
        ``measure_min_annotations``."""
        queued = []
        for project_id in self.store.projects.ids():
            runs = self.store.runs.of_project(project_id)
            trained = [r for r in runs if r.trigger not in (MEASURE, CLASSIFY)]
            last = trained[0].requested_at if trained else None
            if last is None or utcnow() - last >= timedelta(minutes=self.settings.train_min_interval_minutes):
                fresh = self.store.annotations.count(project_id, since=last)
                if fresh >= self.settings.train_min_new_annotations:
                    log.info("project %d: %d new or changed annotations since the last round: queueing one",
                             project_id, fresh)
                    queued.append(self.store.runs.request(project_id, "schedule"))
                    continue
                if self._due_for_measuring(project_id, runs, fresh if last is None else None):
                    log.info("project %d: measuring the starting model on its first labeled images", project_id)
                    queued.append(self.store.runs.request(project_id, MEASURE))
                    continue
            if self._due_for_classifier(project_id, runs):
                log.info("project %d: new labels of label groups: retraining the classifier heads", project_id)
                queued.append(self.store.runs.request(project_id, CLASSIFY))
        return queued

    def _due_for_classifier(self, project_id: int, runs: list) -> bool:
        """Enough annotations since the project's last round of any kind, label groups, and a deployed version."""
        if not self.settings.classifier_min_new_annotations or self.store.models.deployed(project_id) is None:
            return False
        schema = self.store.projects.schema(project_id)
        if schema is None or not schema.label_groups:
            return False
        since = runs[0].requested_at if runs else None
        return self.store.annotations.count(project_id, since=since) >= self.settings.classifier_min_new_annotations

    def _due_for_measuring(self, project_id: int, runs: list, labeled: int | None) -> bool:
        if not self.settings.measure_min_annotations or any(r.trigger == MEASURE for r in runs):
            return False
        if self.store.models.deployed(project_id) is not None:
            return False
        if labeled is None:
            labeled = self.store.annotations.count(project_id)
        return labeled >= self.settings.measure_min_annotations

    def reconcile(self, project_id: int) -> None:
        """Pull missed annotations from Label Studio first; a Label Studio that is down does not stop the round."""
        if not (self.settings.label_studio_url and self.settings.label_studio_api_key):
            return
        try:
            result = sync_project(self.store, LabelStudioClient.from_settings(self.settings), project_id)
            log.info("project %d: reconciled with Label Studio: %s", project_id, result)
        except Exception as error:  # noqa: BLE001 - train on what the store has; the next round syncs again
            log.warning("project %d: Label Studio sync failed (%s); training on the stored annotations",
                        project_id, error)

    def publish(self, project_id: int) -> None:
        """Hand the deployed version's predictions of the unlabeled tasks to Label Studio; never raises."""
        if not (self.settings.label_studio_url and self.settings.label_studio_api_key):
            return
        try:
            model = LoadedModel.load(serving_model(self.store, self.settings, project_id), self.settings.device)
            publish_to_label_studio(self.settings, self.store, LabelStudioClient.from_settings(self.settings),
                                    model, project_id)
        except Exception:  # noqa: BLE001 - the round succeeded; Label Studio catches up at the next /predict
            log.exception("project %d: could not hand the new version's predictions to Label Studio", project_id)

    def run_once(self, project_id: int | None = None,
                 after_epoch: Callable[[EpochResult], None] | None = None,
                 processes: int = 1) -> RoundOutcome | None:
        """Schedule, then claim and run at most one round (publishing a promoted version); None when there is
        nothing to do. ``after_epoch`` reports progress; ``processes`` > 1 fine-tunes on that many processes."""
        self.schedule_due_rounds()
        run = self.store.runs.claim(self.owner, self.settings.lease_seconds, project_id=project_id)
        if run is None:
            return None
        self.remove_stale_staging()
        log.info("run %d: training project %d (trigger: %s)", run.id, run.project_id, run.trigger)
        outcome = run_round(self.settings, self.store, run.id, self.owner, prepare=self.reconcile,
                            after_epoch=after_epoch, processes=processes)
        if outcome.status == "succeeded":
            self.publish(run.project_id)
        return outcome

    def remove_stale_staging(self) -> None:
        """Delete the half-written checkpoints of rounds whose worker died (their runs are no longer running)."""
        staging = self.settings.models_dir / ".staging"
        for directory in sorted(staging.glob("run-*"))[:1000]:
            run_id = directory.name.removeprefix("run-")
            run = self.store.runs.get(int(run_id)) if run_id.isdigit() else None
            if run is None or run.status != "running":
                log.info("removing %s: its round is %s", directory, run.status if run else "unknown")
                shutil.rmtree(directory, ignore_errors=True)

    def run_forever(self, stop: threading.Event, poll_seconds: float = 10.0) -> None:
        log.info("training worker %s started (a round after %d new annotations and %.0f minutes)", self.owner,
                 self.settings.train_min_new_annotations, self.settings.train_min_interval_minutes)
        while not stop.is_set():
            try:
                outcome = self.run_once()
            except Exception:  # noqa: BLE001 - e.g. the database briefly locked: try again at the next poll
                log.exception("training worker: poll failed")
                outcome = None
            if outcome is None:
                stop.wait(poll_seconds)
