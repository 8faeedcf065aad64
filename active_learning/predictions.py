"""Task -> image -> detections -> Label Studio prediction: the one path every prediction takes.

The backend's /predict (and its background completion of tasks over the time budget) and the worker's
refresh after a promotion all go through here, so a prediction looks the same and lands in the same store
rows (``predictions``, keyed by image URL, model version and ``params_key``) whoever made it. A prediction
computed by one of them is therefore answered from the store by the others.

A prediction is ``{"result": [rectangles], "score": s, "model_version": v}``: Label Studio's format for a
/predict answer and for ``POST /api/predictions``. ``score`` is the detector's uncertainty in [0, 1]; LOW means
"look at this task first", which is what Label Studio's "Uncertainty sampling" serves first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass

from active_learning.events import rectangle_results
from active_learning.images import ImageError, ImageFetcher
from active_learning.label_config import LabelSchema, RectangleControl, parse_label_config
from active_learning.labelstudio import LabelStudioClient
from active_learning.registry import LoadedModel
from active_learning.settings import Settings
from active_learning.store import Store
from model import ClassSpec, DetectionSettings

log = logging.getLogger(__name__)


class PredictionError(Exception):
    """The task gets no prediction; the message says why in one line."""


@dataclass(frozen=True)
class Job:
    """What to predict for a project's tasks, worked out once for a whole batch. Only the first
    ``<RectangleLabels>`` of a config is pre-annotated."""

    project_id: int | None
    control: RectangleControl
    classes: list[ClassSpec]
    detection: DetectionSettings
    params_key: str
    """A digest of everything besides the image and the weights that changes the answer."""


def project_job(settings: Settings, store: Store, schema: LabelSchema, project_id: int | None,
                typed_prompt: str | None = None) -> Job:
    """The job for a project: its config's classes, or the interactive prompt when the config has one.

    ``typed_prompt`` (what the annotator just typed) becomes the project's prompt; without it a config with a
    prompt ``<TextArea>`` uses the prompt remembered for the project.
    """
    control = schema.rectangle_controls[0]
    prompt = typed_prompt
    if prompt and project_id is not None:
        store.set_project_prompt(project_id, prompt)
        log.info("project %s: detection prompt is now %r", project_id, prompt)
    elif not prompt and schema.prompt_control is not None and project_id is not None:
        prompt = store.project_prompt(project_id)
    classes = classes_for_prompt(prompt, control.classes) if prompt else control.classes
    detection = DetectionSettings(
        box_threshold=control.score_threshold if control.score_threshold is not None else settings.box_threshold,
        text_threshold=settings.text_threshold,
        nms_iou=settings.nms_iou,
        max_detections=settings.max_detections,
        image_size=settings.image_size,
    )
    key_source = {
        "from_name": control.name,
        "to_name": control.to_name,
        "classes": [[c.name, list(c.aliases)] for c in classes],
        "detection": dataclasses.asdict(detection),
    }
    params_key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:16]
    return Job(project_id, control, classes, detection, params_key)


def classes_for_prompt(prompt: str, labels: list[ClassSpec]) -> list[ClassSpec]:
    """Prompt phrases -> classes. A phrase naming a label (or one of its aliases) is that label; any other phrase
    is searched as typed and its boxes carry the phrase, for the annotator to relabel."""
    by_phrase = {p.lower(): label for label in labels for p in (label.name, *label.aliases)}
    classes: list[ClassSpec] = []
    for phrase in (p.strip() for p in re.split(r"[,.;\n]", prompt)):
        if not phrase:
            continue
        spec = by_phrase.get(phrase.lower(), ClassSpec(name=phrase))
        if spec not in classes:
            classes.append(spec)
    return classes


def image_url(task: dict, job: Job) -> str:
    url = task["data"].get(job.control.image_value_key)
    if not isinstance(url, str) or not url:
        raise PredictionError(f"no image URL in data[{job.control.image_value_key!r}]")
    return url


def stored_prediction(store: Store, task: dict, job: Job, model_version: str) -> dict | None:
    """The prediction made before for this image, model version and job, if any."""
    found = store.find_prediction(image_url(task, job), model_version, job.params_key)
    return None if found is None else as_prediction(found["result"], found["score"], model_version)


def predict_task(model: LoadedModel, fetcher: ImageFetcher, store: Store, task: dict, job: Job) -> dict:
    """Fetch the task's image, detect, store the prediction (when the task has an id) and return it.

    Raises PredictionError when the image cannot be read or the detector fails on it: one odd image must not
    cost the other tasks their predictions.
    """
    url = image_url(task, job)
    try:
        fetched = fetcher.fetch(url)
    except ImageError as exc:
        raise PredictionError(f"image {url} cannot be read ({exc})") from None
    try:
        detections = model.detector.detect([fetched.image], job.classes, job.detection)[0]
    except Exception as exc:  # noqa: BLE001 - logged with its traceback, reported as this task's failure
        log.exception("detection failed on %s", url)
        raise PredictionError(f"detection failed on {url}: {type(exc).__name__}") from None
    result = rectangle_results(detections, job.control.name, job.control.to_name, fetched.width, fetched.height)
    score = float(detections.metadata["uncertainty"])
    if isinstance(task.get("id"), int):
        store.save_prediction(project_id=job.project_id, task_id=task["id"], image_url=url,
                              model_version=model.version, params_key=job.params_key, result=result, score=score)
    return as_prediction(result, score, model.version)


def as_prediction(result: list, score: float, model_version: str) -> dict:
    return {"result": result, "score": score, "model_version": model_version}


def publish_to_label_studio(settings: Settings, store: Store, client: LabelStudioClient, model: LoadedModel,
                            project_id: int, fetcher: ImageFetcher | None = None) -> int:
    """Predict every unlabeled task of the project with ``model``, push the predictions to Label Studio, then
    point the project's ``model_version`` at the model (Label Studio refuses a version no prediction carries,
    hence this order). Returns how many predictions were pushed; a task that fails is logged and left out.
    """
    config = client.get_project(project_id).get("label_config") or ""
    schema = parse_label_config(config)
    if not schema.rectangle_controls:
        log.warning("project %d: the label config has nothing to pre-annotate", project_id)
        return 0
    store.upsert_project(project_id, config)
    job = project_job(settings, store, schema, project_id)
    fetcher = fetcher or ImageFetcher(settings)
    tasks = client.unlabeled_tasks(project_id)
    log.info("project %d: predicting %d unlabeled tasks with %s", project_id, len(tasks), model.version)
    pushed = 0
    for n, task in enumerate(tasks, 1):
        try:
            prediction = stored_prediction(store, task, job, model.version) \
                or predict_task(model, fetcher, store, task, job)
            client.create_prediction(task["id"], prediction)
            pushed += 1
        except Exception as exc:  # noqa: BLE001 - one task's failure (image, Label Studio) skips that task only
            log.warning("project %d: task %s gets no prediction of %s: %s", project_id, task.get("id"),
                        model.version, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if n % 10 == 0 or n == len(tasks):
            log.info("project %d: %d/%d tasks predicted with %s (%d pushed)", project_id, n, len(tasks),
                     model.version, pushed)
    if not pushed:
        log.warning("project %d: no prediction of %s in Label Studio, so its model_version stays", project_id,
                    model.version)
        return 0
    client.set_project_model_version(project_id, model.version)
    store.set_project_model_version(project_id, model.version)
    log.info("project %d: Label Studio's model_version is now %s", project_id, model.version)
    return pushed
