"""Finishing, in the background, the tasks a /predict call had no time for: every task ends with a prediction.

/predict answers within its budget (Label Studio gives up after 100 s); the tasks it answered without a prediction
are queued here and predicted by a thread of the server process (up to ``AT_ONCE`` at a time), with the model that
serves their project at that moment (and that version's calibrated thresholds). Each prediction goes to the store,
so the next "Retrieve predictions" answers it at once, and, when Label Studio is configured, straight into Label
Studio (``POST /api/predictions``), so nobody has to ask again. The queue is bounded; a task that finds it full is
dropped (logged) and Label Studio asks for it again next time. Queued tasks do not survive a restart, for the
same reason that is fine.
"""

from __future__ import annotations

import logging
import queue
import threading

from active_learning.images import ImageFetcher
from active_learning.labelstudio.client import LabelStudioClient
from active_learning.serving.jobs import Job, recalibrated
from active_learning.serving.pool import ModelPool
from active_learning.serving.tasks import predict_tasks
from active_learning.store import Store
from backend.metrics import Metrics

log = logging.getLogger(__name__)

CAPACITY = 10_000
"""Tasks waiting at most; a few hundred bytes each."""
AT_ONCE = 32
"""Queued tasks predicted together (fetched ahead of the model and batched, ``serving.batching``)."""


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
            queued = self._take()
            try:
                for job, tasks in _by_job(queued):
                    self._finish(tasks, job)
            except Exception:  # noqa: BLE001 - e.g. the store down: these tasks are lost, the thread goes on
                log.exception("background prediction of %d task(s) failed", len(queued))
                self.metrics.count("failures", len(queued))
            finally:
                for _ in queued:
                    self._queue.task_done()

    def _take(self) -> list[tuple[dict, Job]]:
        """The next queued task (waiting for one) and those queued behind it, up to ``AT_ONCE``."""
        queued = [self._queue.get()]
        while len(queued) < AT_ONCE:
            try:
                queued.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return queued

    def _finish(self, tasks: list[dict], job: Job) -> None:
        model = self.pool.model_for(job.project_id)
        # another version may serve by now
        job = recalibrated(self.pool.settings, job, model.calibration, model.classifier)
        for answer in predict_tasks(self.pool.settings, model, self.fetcher, self.store, tasks, job):
            if answer.from_store:
                continue  # a later /predict (or the worker) answered it meanwhile, and Label Studio has it
            if answer.prediction is None:
                log.warning("task %s: %s; no prediction", answer.task.get("id"), answer.error)
                self.metrics.count("failures")
                continue
            self.metrics.count("predicted_in_background")
            if self.label_studio is not None and isinstance(answer.task.get("id"), int):
                try:
                    self.label_studio.create_prediction(answer.task["id"], answer.prediction)
                    log.info("task %s: prediction of %s pushed to Label Studio", answer.task["id"], model.version)
                except Exception as exc:  # noqa: BLE001 - Label Studio down: stored, the next /predict answers it
                    log.warning("task %s: prediction not pushed to Label Studio: %s", answer.task["id"],
                                str(exc)[:300])


def _by_job(queued: list[tuple[dict, Job]]) -> list[tuple[Job, list[dict]]]:
    """The tasks of each job, in queue order (the tasks of one /predict call share its job object)."""
    groups: dict[int, tuple[Job, list[dict]]] = {}
    for task, job in queued:
        groups.setdefault(id(job), (job, []))[1].append(task)
    return list(groups.values())
