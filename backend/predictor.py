"""The model class behind the routes: Label Studio requests in, Label Studio answers out.

What a newcomer needs to know:

* ``/predict`` answers exactly one entry per task, in task order. An entry is a prediction dict, or an EMPTY
  LIST when the task got no prediction (its image could not be read, the time budget ran out, or the config has
  nothing to pre-annotate). Label Studio 1.23.2 (``ml/models.py``, ``_get_predictions_from_ml_backend``) accepts a
  list of predictions per task and stores each of them; an empty list stores nothing, so the task keeps no
  prediction of our ``model_version`` and Label Studio asks for it again next time. An entry ``{"result": []}``
  would instead be stored as an empty prediction and the task would never be asked for again.
* Label Studio sends every selected task in one call and gives up after 100 s. Predictions already made for the
  same image URL, model version and detection parameters (``params_key``) come from the store at once; new
  ones are computed until ``settings.predict_budget_seconds`` is spent, the rest is skipped (logged, not stored).
* The prediction ``score`` is the detector's uncertainty in [0, 1]: LOW means "look at this task first", which is
  what Label Studio's "Uncertainty sampling" serves first.
* Interactive pre-annotation: when the config has a ``<TextArea>`` on the image and the editor sends its text in
  ``params.context``, that text (phrases separated by commas) is the class prompt. It is remembered per project
  and used for that project's later tasks.
* Only the first ``<RectangleLabels>`` of a config is pre-annotated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from active_learning.events import rectangle_results
from active_learning.images import ImageError, ImageFetcher
from active_learning.label_config import (
    LabelConfigError,
    LabelSchema,
    PromptControl,
    RectangleControl,
    parse_label_config,
)
from active_learning.labelstudio import LabelStudioClient
from active_learning.settings import Settings
from active_learning.store import Store
from backend.metrics import Metrics
from model import ClassSpec, DetectionSettings, Detector

log = logging.getLogger(__name__)

NO_PREDICTION: list = []
"""The per-task answer that makes Label Studio store nothing for that task (see the module docstring)."""


class RequestError(ValueError):
    """The request is malformed; the routes answer 400 with this message."""


@dataclass(frozen=True)
class Job:
    """What one /predict call asks for, worked out once for all its tasks."""

    project_id: int | None
    control: RectangleControl
    classes: list[ClassSpec]
    detection: DetectionSettings
    params_key: str


def model_version_of(detector: Detector) -> str:
    """``<short model name>-<12 hex of the weights>``: the same weights give the same version after a restart."""
    short_name = Path(str(detector.source).rstrip("/")).name or "model"
    return f"{short_name}-{detector.version_digest}"


class Predictor:
    def __init__(
        self,
        settings: Settings,
        detector: Detector,
        store: Store,
        fetcher: ImageFetcher,
        *,
        sync_model_version: Callable[[int, str], None] | None = None,
    ) -> None:
        """``sync_model_version(ls_project_id, model_version)`` keeps the LS project's ``model_version`` in step."""
        self.settings = settings
        self.detector = detector
        self.store = store
        self.fetcher = fetcher
        self.model_version = model_version_of(detector)
        self.metrics = Metrics()
        self._sync_model_version = sync_model_version
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-sync")
        self._sync_pending: set[int] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Predictor":
        """Load the serving model once (call it in each server process) and connect to the store."""
        store = Store.from_settings(settings)
        deployed = store.deployed_model(None)  # a model promoted by training, else the starting model
        detector = Detector.load(deployed.path if deployed else settings.model, device=settings.device)
        sync = _label_studio_sync(settings, store) if settings.label_studio_url else None
        predictor = cls(settings, detector, store, ImageFetcher(settings), sync_model_version=sync)
        log.info("serving %s (model_version %s) on %s", detector.source, predictor.model_version, detector.device)
        return predictor

    # --- routes ------------------------------------------------------------------------------------------
    def health(self) -> dict:
        return {"status": "UP", "model_class": type(self).__name__, "model_version": self.model_version}

    def setup(self, body: dict) -> dict:
        """Check the label config and answer our model version; keep the LS project's version in step."""
        schema = _parse_config(_field(body, "schema", str))
        project_id = _project_id(body.get("project"))
        answer: dict = {"model_version": self.model_version}
        if not schema.rectangle_controls:
            answer["warning"] = _NOTHING_TO_DO
            log.warning("/setup for project %s: %s", project_id, _NOTHING_TO_DO)
        if project_id is not None:
            self.store.upsert_project(project_id, body["schema"])
            self._keep_in_step(project_id)
        return answer

    def predict(self, body: dict) -> dict:
        tasks = _field(body, "tasks", list)
        for task in tasks:
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise RequestError("every task must be an object with a 'data' object")
        config = _field(body, "label_config", str)
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise RequestError("'params' must be an object")
        schema = _parse_config(config)
        project_id = _project_id(body.get("project"))
        if not schema.rectangle_controls:
            log.warning("/predict for project %s: %s", project_id, _NOTHING_TO_DO)
            return {"results": [NO_PREDICTION for _ in tasks]}
        if project_id is not None:
            self.store.upsert_project(project_id, config)
        job = self._job(schema, project_id, params.get("context"))
        results = self._predict_tasks(tasks, job)
        if project_id is not None and any(results):
            self._keep_in_step(project_id)
        return {"results": results}

    def webhook(self, body: dict) -> dict:
        """Every event goes to the store, which also queues a training run on START_TRAINING; unknown actions
        are acknowledged and ignored."""
        try:
            outcome = self.store.ingest(body)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        log.info("webhook %s: %s", outcome.action, outcome.message)
        status = "ok" if outcome.handled else "ignored"
        return {"status": status, "action": outcome.action, "message": outcome.message}

    # --- the work ----------------------------------------------------------------------------------------
    def _job(self, schema: LabelSchema, project_id: int | None, context: Any) -> Job:
        control = schema.rectangle_controls[0]
        prompt = _prompt_from_context(schema.prompt_control, context)
        if prompt and project_id is not None:
            self.store.set_project_prompt(project_id, prompt)
            log.info("project %s: detection prompt is now %r", project_id, prompt)
        elif not prompt and schema.prompt_control is not None and project_id is not None:
            prompt = self.store.project_prompt(project_id)
        classes = _classes_for_prompt(prompt, control.classes) if prompt else control.classes
        s = self.settings
        detection = DetectionSettings(
            box_threshold=control.score_threshold if control.score_threshold is not None else s.box_threshold,
            text_threshold=s.text_threshold,
            nms_iou=s.nms_iou,
            max_detections=s.max_detections,
            image_size=s.image_size,
        )
        key_source = {
            "from_name": control.name,
            "to_name": control.to_name,
            "classes": [[c.name, list(c.aliases)] for c in classes],
            "detection": dataclasses.asdict(detection),
        }
        params_key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:16]
        return Job(project_id, control, classes, detection, params_key)

    def _predict_tasks(self, tasks: list[dict], job: Job) -> list:
        deadline = time.monotonic() + self.settings.predict_budget_seconds
        results, skipped = [], []
        for task in tasks:
            key = job.control.image_value_key
            url = task["data"].get(key)
            if not isinstance(url, str) or not url:
                log.warning("task %s: no image URL in data[%r]; no prediction", task.get("id"), key)
                self.metrics.count("failures")
                results.append(NO_PREDICTION)
                continue
            cached = self.store.find_prediction(url, self.model_version, job.params_key)
            if cached is not None:
                self.metrics.count("cache_hits")
                results.append(_prediction(cached["result"], cached["score"], self.model_version))
                continue
            if time.monotonic() >= deadline:
                skipped.append(task.get("id"))
                results.append(NO_PREDICTION)
                continue
            results.append(self._predict_one(task, url, job))
        if skipped:
            self.metrics.count("skipped_over_budget", len(skipped))
            log.warning(
                "/predict budget of %.0f s spent: %d task(s) left without prediction (Label Studio asks again): %s",
                self.settings.predict_budget_seconds, len(skipped), skipped,
            )
        return results

    def _predict_one(self, task: dict, url: str, job: Job) -> dict | list:
        try:
            fetched = self.fetcher.fetch(url)
        except ImageError as exc:
            log.warning("task %s: image %s cannot be read (%s); no prediction", task.get("id"), url, exc)
            self.metrics.count("failures")
            return NO_PREDICTION
        try:
            detections = self.detector.detect([fetched.image], job.classes, job.detection)[0]
        except Exception:  # one odd image must not cost the other tasks their predictions
            log.exception("task %s: detection failed on %s; no prediction", task.get("id"), url)
            self.metrics.count("failures")
            return NO_PREDICTION
        result = rectangle_results(detections, job.control.name, job.control.to_name, fetched.width, fetched.height)
        score = float(detections.metadata["uncertainty"])
        if isinstance(task.get("id"), int):
            self.store.save_prediction(
                project_id=job.project_id, task_id=task["id"], image_url=url, model_version=self.model_version,
                params_key=job.params_key, result=result, score=score,
            )
        self.metrics.count("predictions")
        return _prediction(result, score, self.model_version)

    def _keep_in_step(self, project_id: int) -> None:
        """Point the Label Studio project at our model version, in the background (/setup has 3 s).

        Label Studio refuses a ``model_version`` no prediction of the project carries yet ("doesn't exist either
        as live model or as static predictions"), and it stores our predictions only after /predict answered:
        hence the retries, and the call after every /predict too.
        """
        if self._sync_model_version is None or project_id in self._sync_pending:
            return
        self._sync_pending.add(project_id)
        self._background.submit(self._sync_with_retries, project_id)

    def _sync_with_retries(self, project_id: int) -> None:
        try:
            for delay in SYNC_RETRY_DELAYS:
                time.sleep(delay)
                try:
                    self._sync_model_version(project_id, self.model_version)
                    return
                except Exception as exc:  # Label Studio down, key wrong, or no prediction of ours there yet
                    error = str(exc)[:300]
            log.warning("could not set model_version of Label Studio project %s: %s", project_id, error)
        finally:
            self._sync_pending.discard(project_id)


SYNC_RETRY_DELAYS = (0.0, 1.0, 2.0, 4.0, 8.0)
"""Seconds before each attempt to set the Label Studio project's model_version."""
_NOTHING_TO_DO = "the label config has no <RectangleLabels> on an <Image>: groundloop has nothing to pre-annotate"


def _label_studio_sync(settings: Settings, store: Store) -> Callable[[int, str], None]:
    """``sync(project_id, version)``: set the Label Studio project's ``model_version`` unless it is already that."""
    client = LabelStudioClient.from_settings(settings)

    def sync(project_id: int, version: str) -> None:
        if client.get_project(project_id).get("model_version") != version:
            client.set_project_model_version(project_id, version)
        store.set_project_model_version(project_id, version)

    return sync


def _prediction(result: list, score: float, model_version: str) -> dict:
    return {"result": result, "score": score, "model_version": model_version}


def _prompt_from_context(control: PromptControl | None, context: Any) -> str | None:
    """The text the annotator typed into the prompt TextArea, if this request carries it."""
    if control is None or not isinstance(context, dict) or not isinstance(context.get("result"), list):
        return None
    for item in context["result"]:
        if isinstance(item, dict) and item.get("from_name") == control.name and item.get("type") == "textarea":
            text = (item.get("value") or {}).get("text")
            lines = text if isinstance(text, list) else [text]
            prompt = " ".join(line.strip() for line in lines if isinstance(line, str) and line.strip())
            return prompt or None
    return None


def _classes_for_prompt(prompt: str, labels: list[ClassSpec]) -> list[ClassSpec]:
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


def _parse_config(xml: str) -> LabelSchema:
    try:
        return parse_label_config(xml)
    except LabelConfigError as exc:
        raise RequestError(str(exc)) from None


def _field(body: dict, name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        raise RequestError(f"missing field '{name}'")
    if not isinstance(value, kind):
        raise RequestError(f"'{name}' must be a {_KIND_NAMES[kind]}, not {type(value).__name__}")
    return value


_KIND_NAMES = {str: "string", list: "list"}


def _project_id(raw: Any) -> int | None:
    """Label Studio sends ``"<project id>.<created_at epoch>"``; None when absent or not of that form."""
    head = str(raw).split(".", 1)[0] if raw is not None else ""
    return int(head) if head.isdigit() else None
