"""Finishing, in the background, the tasks a /predict call had no time for: every task ends with a prediction.

/predict answers within its budget (Label Studio gives up after 100 s); the tasks it answered without a
prediction are queued here and predicted one at a time by a thread of the server process, with the model that
serves their project at that moment (and that version's calibrated thresholds). Each prediction goes to the
store, so the next "Retrieve predictions" answers it at once, and, when Label Studio is configured, straight
into Label Studio (``POST /api/predictions``), so nobody has to ask again. The queue is bounded; a task that
finds it full is dropped (logged) and Label Studio asks for it again next time. Queued tasks do not survive a
restart, for the same reason that is fine.
"""

from __future__ import annotations

import logging
import queue
import threading

from active_learning.images import ImageFetcher
from active_learning.labelstudio.client import LabelStudioClient
from active_learning.serving.jobs import Job, recalibrated
from active_learning.serving.pool import ModelPool
from active_learning.serving.predict import PredictionError, predict_task, stored_prediction
from active_learning.store import Store
from backend.metrics import Metrics

log = logging.getLogger(__name__)

CAPACITY = 10_000
"""Tasks waiting at most; a few hundred bytes each."""


class Backfill:
    def __init__(self, pool: ModelPool, store: Store, fetcher: ImageFetcher, metrics: Metrics,
                 label_studio: LabelStudioClient | None = None, capacity: int = CAPACITY) -> None:
        self.pool = pool
        self.store = store
        self.fetcher = fetcher
        self.metrics = metrics
        self.label_studio = label_studio
        self._queue: queue.Queue[tuple[dict, Job]] = queue.Queue(capacity)
        threading.Thread(target=self._run, name="backfill", daemon=True).start()

    def submit(self, tasks: list[dict], job: Job) -> None:
        dropped = []
        for task in tasks:
            try:
                self._queue.put_nowait((task, job))
            except queue.Full:
                dropped.append(task.get("id"))
        if dropped:
            log.warning("background queue full: %d task(s) dropped (Label Studio asks again): %s", len(dropped),
                        dropped)

    def wait(self) -> None:
        """Block until every task queued so far is done."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            task, job = self._queue.get()
            try:
                self._finish(task, job)
            except Exception:  # noqa: BLE001 - e.g. Label Studio down: this task is lost, the thread goes on
                log.exception("task %s: background prediction failed", task.get("id"))
                self.metrics.count("failures")
            finally:
                self._queue.task_done()

    def _finish(self, task: dict, job: Job) -> None:
        model = self.pool.model_for(job.project_id)
        # another version may serve by now
        job = recalibrated(self.pool.settings, job, model.calibration, model.classifier)
        if stored_prediction(self.store, task, job, model.version) is not None:
            return  # a later /predict (or the worker) answered it meanwhile, and Label Studio has it
        try:
            prediction = predict_task(model, self.fetcher, self.store, task, job)
        except PredictionError as exc:
            log.warning("task %s: %s; no prediction", task.get("id"), exc)
            self.metrics.count("failures")
            return
        self.metrics.count("predicted_in_background")
        if self.label_studio is not None and isinstance(task.get("id"), int):
            self.label_studio.create_prediction(task["id"], prediction)
            log.info("task %s: prediction of %s pushed to Label Studio", task["id"], model.version)
