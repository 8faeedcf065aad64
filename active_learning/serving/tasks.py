"""Label Studio tasks -> their predictions: what /predict, background completion and the worker's publish share.

``predict_tasks`` answers each task once: at once from the store when this image, model version and job were
predicted before; else, in task order, images go through the detector in batches, fetched ahead of it
(``batching``), and videos one at a time (``video_predict``). Every new prediction is stored (keyed by image URL,
model version and the job's ``params_key``) before it is answered, so whoever asks next gets it from the store.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from active_learning.images import ImageError, ImageFetcher
from active_learning.images.fetcher import short_url
from active_learning.serving.batching import predict_batched
from active_learning.serving.jobs import Job
from active_learning.serving.predict import PredictionError, as_prediction, image_url, stored_prediction
from active_learning.settings import Settings
from active_learning.store import Store

if TYPE_CHECKING:
    from active_learning.serving.pool import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskAnswer:
    index: int
    """The task's position in the tasks asked for."""
    task: dict
    prediction: dict | None = None
    """``{"result", "score", "model_version"}``, or None: no prediction (see ``error`` and ``over_budget``)."""
    error: str | None = None
    """Why the task has no prediction, in one line; None when it has one or ran out of time."""
    over_budget: bool = False
    """The deadline passed before the task's turn (or during its video): finish it later."""
    from_store: bool = False


def predict_tasks(settings: Settings, model: "LoadedModel", fetcher: ImageFetcher, store: Store,
                  tasks: Sequence[dict], job: Job, deadline: float | None = None) -> Iterator[TaskAnswer]:
    """One answer per task of ``tasks`` (``index`` says which), those from the store first; no task is started after
    ``deadline`` (``time.monotonic()``). A task that fails (no image URL, an unreadable image, the detector
    failing on it) costs only itself."""
    new: list[tuple[int, dict, str]] = []
    for index, task in enumerate(tasks):
        try:
            url = image_url(task, job)
            found = stored_prediction(store, task, job, model.version)
        except PredictionError as exc:
            yield TaskAnswer(index, task, error=str(exc))
            continue
        if found is not None:
            yield TaskAnswer(index, task, found, from_store=True)
        else:
            new.append((index, task, url))
    answers = _videos(model, fetcher, new, job, deadline) if job.schema.is_video else \
        _images(settings, model, fetcher, new, job, deadline)
    for answer in answers:
        if answer.prediction is not None:
            _save(store, model, job, answer)
        yield answer


def _images(settings: Settings, model: "LoadedModel", fetcher: ImageFetcher, new: list[tuple[int, dict, str]],
            job: Job, deadline: float | None) -> Iterator[TaskAnswer]:
    outcomes = predict_batched(model.detector, job, new, lambda item: fetcher.fetch(item[2]), settings, deadline)
    for outcome in outcomes:
        index, task, _ = outcome.item
        prediction = None if outcome.prediction is None else outcome.prediction.as_prediction(model.version)
        yield TaskAnswer(index, task, prediction, error=outcome.error, over_budget=outcome.over_budget)


def _videos(model: "LoadedModel", fetcher: ImageFetcher, new: list[tuple[int, dict, str]], job: Job,
            deadline: float | None) -> Iterator[TaskAnswer]:
    from active_learning.serving.video_predict import predict_video
    from active_learning.video.cache import VideoCache
    from active_learning.video.frames import VideoError
    from active_learning.video.tracking import OverBudget

    for index, task, url in new:
        if deadline is not None and time.monotonic() >= deadline:
            yield TaskAnswer(index, task, over_budget=True)
            continue
        try:
            path = VideoCache(fetcher.settings, fetcher).path(url)
            result, score = predict_video(model.detector, path, job, deadline)
            yield TaskAnswer(index, task, as_prediction(result, score, model.version))
        except (ImageError, VideoError) as exc:
            yield TaskAnswer(index, task, error=str(exc))
        except OverBudget as exc:  # a video longer than the budget left
            log.info("task %s: %s", task.get("id"), exc)
            yield TaskAnswer(index, task, over_budget=True)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, reported as this task's failure
            log.exception("tracking failed on %s", short_url(url))
            yield TaskAnswer(index, task, error=f"tracking failed on {short_url(url)}: {type(exc).__name__}")


def _save(store: Store, model: "LoadedModel", job: Job, answer: TaskAnswer) -> None:
    task = answer.task
    if isinstance(task.get("id"), int):
        store.predictions.save(project_id=job.project_id, task_id=task["id"], image_url=image_url(task, job),
                               model_version=model.version, params_key=job.params_key,
                               result=answer.prediction["result"], score=answer.prediction["score"])
