"""Images + a job -> Label Studio regions and a score: the one prediction path.

/predict (and its background completion of tasks over the time budget), the worker's publish after a
promotion, ``groundloop predict`` on a folder and the demo all call ``predict_images``; tasks go through
``predict_task`` (images here, videos in ``video_predict``), which stores the prediction (``predictions``, keyed by image URL, model version and the job's
``params_key``), so a prediction computed by one of them is answered from the store by the others.

A prediction is ``{"result": [regions], "score": s, "model_version": v}``: Label Studio's format for a
/predict answer and for ``POST /api/predictions``. Regions are rectangles, and for a config with brush or polygon
labels also masks: the boxes those controls serve prompt the segmenter (``segmenting``); boxes of labels sharing a
phrase get their label from the crop classifier first (``labeling``). ``score`` is the task's uncertainty in
[0, 1] (the detector's, lowered by uncertain labels); LOW means "look at this task first", which is what Label
Studio's "Uncertainty sampling" serves first.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from active_learning.images import ImageError, ImageFetcher
from active_learning.images.fetcher import short_url
from active_learning.labelstudio.regions import regions_from_detections
from active_learning.serving.interactive import SmartPrompt, answer_smart_prompt
from active_learning.serving.jobs import Job
from active_learning.serving.labeling import assign_labels
from active_learning.serving.segmenting import add_masks, shared_segmenter
from active_learning.serving.shared_models import ModelUnavailable
from active_learning.store import Store

if TYPE_CHECKING:
    import supervision as sv
    from PIL import Image

    from active_learning.labelstudio.config import ProjectSchema
    from active_learning.serving.pool import LoadedModel
    from model import Detector

log = logging.getLogger(__name__)

IMAGES_AT_ONCE = threading.BoundedSemaphore(2)
"""Task images a process holds decoded at once: the detector takes one image at a time anyway, and every request
thread holding its own (up to ``max_image_pixels``) decoded image would add up to gigabytes."""


class PredictionError(Exception):
    """The task gets no prediction; the message says why in one line."""


@dataclass(frozen=True)
class ImagePrediction:
    result: list[dict]
    """Label Studio regions, one per (detection, control that offers its label)."""
    score: float
    detections: "sv.Detections"

    def as_prediction(self, model_version: str) -> dict:
        return as_prediction(self.result, self.score, model_version)


def predict_images(detector: "Detector", images: Sequence["Image.Image"], job: Job) -> list[ImagePrediction]:
    """One detect pass over ``images`` (batched by the detector), the labels of label groups (``labeling``), the
    masks the job's mask controls need, and each image's regions and score. Raises ``ModelUnavailable`` when masks
    or custom labels are needed and the segmenter or the classifier's backbone cannot load."""
    detections = detector.detect(list(images), list(job.classes), job.detection)
    if job.schema.label_groups:
        for image, found in zip(images, detections):
            assign_labels(image, found, job, detector.device)
    if job.segmenter is not None:
        segmenter = shared_segmenter(job.segmenter, detector.device)
        for image, found in zip(images, detections):
            add_masks(segmenter, image, found, job)
    return [
        ImagePrediction(
            result=regions_from_detections(found, job.schema, image.width, image.height, threshold=job.threshold),
            score=float(found.metadata["uncertainty"]),
            detections=found,
        )
        for image, found in zip(images, detections)
    ]


def image_url(task: dict, job: Job) -> str:
    return _image_url(task, job.schema.image_key)


def _image_url(task: dict, key: str) -> str:
    url = task["data"].get(key)
    if not isinstance(url, str) or not url:
        raise PredictionError(f"no image URL in data[{key!r}]")
    return url


def stored_prediction(store: Store, task: dict, job: Job, model_version: str) -> dict | None:
    """The prediction made before for this image, model version and job, if any."""
    found = store.predictions.find(image_url(task, job), model_version, job.params_key)
    return None if found is None else as_prediction(found["result"], found["score"], model_version)


def predict_task(model: "LoadedModel", fetcher: ImageFetcher, store: Store, task: dict, job: Job,
                 deadline: float | None = None) -> dict:
    """Fetch the task's image (or video), predict, store the prediction (when the task has an id) and return it.

    Raises PredictionError when the image cannot be read or the detector fails on it: one odd image must not
    cost the other tasks their predictions. A video raises ``OverBudget`` once ``deadline`` (``time.monotonic()``)
    has passed: the caller finishes it in the background.
    """
    url = image_url(task, job)
    result, score = (_predict_video_task if job.schema.is_video else _predict_image_task)(
        model, fetcher, url, job, deadline)
    if isinstance(task.get("id"), int):
        store.predictions.save(project_id=job.project_id, task_id=task["id"], image_url=url,
                               model_version=model.version, params_key=job.params_key, result=result, score=score)
    return as_prediction(result, score, model.version)


def _predict_image_task(model: "LoadedModel", fetcher: ImageFetcher, url: str, job: Job,
                        deadline: float | None) -> tuple[list[dict], float]:
    with IMAGES_AT_ONCE:
        try:
            fetched = fetcher.fetch(url)
        except ImageError as exc:
            raise PredictionError(str(exc)) from None
        try:
            [predicted] = predict_images(model.detector, [fetched.image], job)
        except ModelUnavailable as exc:
            raise PredictionError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, reported as this task's failure
            log.exception("detection failed on %s", short_url(url))
            raise PredictionError(f"detection failed on {short_url(url)}: {type(exc).__name__}") from None
    return predicted.result, predicted.score


def _predict_video_task(model: "LoadedModel", fetcher: ImageFetcher, url: str, job: Job,
                        deadline: float | None) -> tuple[list[dict], float]:
    from active_learning.serving.video_predict import predict_video
    from active_learning.video.cache import VideoCache
    from active_learning.video.frames import VideoError
    from active_learning.video.tracking import OverBudget

    try:
        path = VideoCache(fetcher.settings, fetcher).path(url)
        return predict_video(model.detector, path, job, deadline)
    except (ImageError, VideoError) as exc:
        raise PredictionError(str(exc)) from None
    except OverBudget:
        raise
    except Exception as exc:  # noqa: BLE001 - logged with its traceback, reported as this task's failure
        log.exception("tracking failed on %s", short_url(url))
        raise PredictionError(f"tracking failed on {short_url(url)}: {type(exc).__name__}") from None


def predict_smart_prompt(model: "LoadedModel", fetcher: ImageFetcher, task: dict, schema: "ProjectSchema",
                         prompt: "SmartPrompt", segmenter_source: str) -> dict:
    """The answer to a smart tool's prompt on the task's image (``interactive``); shown by Label Studio, stored by
    neither. Raises PredictionError when the image or the segmenter fails."""
    url = _image_url(task, schema.image_key)
    with IMAGES_AT_ONCE:
        try:
            fetched = fetcher.fetch(url)
            segmenter = shared_segmenter(segmenter_source, model.detector.device)
        except (ImageError, ModelUnavailable) as exc:
            raise PredictionError(str(exc)) from None
        try:
            result = answer_smart_prompt(segmenter, fetched.image, prompt, schema)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, reported as this task's failure
            log.exception("segmentation failed on %s", short_url(url))
            raise PredictionError(f"segmentation failed on {short_url(url)}: {type(exc).__name__}") from None
    return as_prediction(result, 1.0, model.version)


def as_prediction(result: list, score: float, model_version: str) -> dict:
    return {"result": result, "score": score, "model_version": model_version}
