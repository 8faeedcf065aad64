"""Images + a job -> Label Studio regions and a score: the one prediction path.

/predict (and its background completion of tasks over the time budget), the worker's publish after a
promotion, ``groundloop predict`` on a folder and the demo all call ``predict_images``: Label Studio tasks through
``tasks.predict_tasks`` (which stores each prediction, keyed by image URL, model version and the job's
``params_key``, so a prediction computed by one caller is answered from the store to the others), a folder's images
through ``batching.predict_batched`` (which fetches ahead of the model and batches).

A prediction is ``{"result": [regions], "score": s, "model_version": v}``: Label Studio's format for a
/predict answer and for ``POST /api/predictions``. Regions are rectangles, and for a config with brush or polygon
labels also masks: the boxes those controls serve prompt the segmenter (``segmenting``); boxes of labels sharing a
phrase get their label from the crop classifier first (``labeling``). ``score`` is the task's uncertainty in
[0, 1] (the detector's, lowered by uncertain labels); LOW means "look at this task first", which is what Label
Studio's "Uncertainty sampling" serves first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from active_learning.images import ImageError, ImageFetcher
from active_learning.images.fetcher import short_url
from active_learning.images.slots import image_slots
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


def predict_smart_prompt(model: "LoadedModel", fetcher: ImageFetcher, task: dict, schema: "ProjectSchema",
                         prompt: "SmartPrompt", segmenter_source: str) -> dict:
    """The answer to a smart tool's prompt on the task's image (``interactive``); shown by Label Studio, stored by
    neither. Raises PredictionError when the image or the segmenter fails."""
    url = _image_url(task, schema.image_key)
    with image_slots(fetcher.settings).one():
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
