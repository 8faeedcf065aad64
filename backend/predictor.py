"""The model class behind the routes: Label Studio requests in, Label Studio answers out.

What a newcomer needs to know:

* Each project is served by its own model version (``registry.ModelPool``): the starting model until training
  deploys a fine-tuned version for it. The pool checks the store on every request, so a version the worker
  deploys answers the next request of that project, without a restart; a request in flight keeps the model it
  started with.
* ``/predict`` answers exactly one entry per task, in task order. An entry is a prediction dict, or an EMPTY
  LIST when the task got no prediction (its image could not be read, the time budget ran out, or the config has
  nothing to pre-annotate). Label Studio 1.23.2 (``ml/models.py``, ``_get_predictions_from_ml_backend``) accepts a
  list of predictions per task and stores each of them; an empty list stores nothing, so the task keeps no
  prediction of our ``model_version`` and Label Studio asks for it again next time. An entry ``{"result": []}``
  would instead be stored as an empty prediction and the task would never be asked for again.
* Label Studio sends every selected task in one call and gives up after 100 s. Predictions already made for the
  same image URL, model version and detection parameters come from the store at once; new ones are computed
  until ``settings.predict_budget_seconds`` is spent. The tasks left over are answered with no prediction and
  finished in the background (``backend.backfill``): stored, so the next "Retrieve predictions" answers them at
  once, and pushed to Label Studio when LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are set. Every task ends
  with a prediction.
* The prediction itself (image, detection, Label Studio format, score) is ``active_learning.serving.predict``: the
  worker's refresh after a promotion makes its predictions the same way.
* Interactive pre-annotation: when the config has a ``<TextArea>`` on the image and the editor sends its text in
  ``params.context``, that text (phrases separated by commas) is the class prompt. It is remembered per project
  and used for that project's later tasks. A click or a box of a smart tool in ``params.context`` is answered
  with the segmenter's mask for it instead (``active_learning.serving.interactive``), not stored.
* Annotation webhooks go to the store; the annotated task's image is then cached on disk in the background, so
  training never needs Label Studio up.
"""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from active_learning.images import ImageCache, ImageFetcher, cache_task_image
from active_learning.labelstudio.client import LabelStudioClient
from active_learning.labelstudio.config import LabelConfigError, ProjectSchema, PromptControl, parse_label_config
from active_learning.labelstudio.records import MAX_ID
from active_learning.reports.status import collect_status
from active_learning.serving.interactive import SmartPrompt, smart_prompt
from active_learning.serving.jobs import Job, PromptError, project_job
from active_learning.serving.pool import LoadedModel, ModelPool
from active_learning.serving.predict import PredictionError, predict_smart_prompt
from active_learning.serving.tasks import predict_tasks
from active_learning.settings import Settings
from active_learning.store import Store
from backend.backfill import Backfill
from backend.metrics import Metrics

log = logging.getLogger(__name__)

NO_PREDICTION: list = []
"""The per-task answer that makes Label Studio store nothing for that task (see the module docstring)."""


class RequestError(ValueError):
    """The request is malformed; the routes answer 400 with this message."""


class Predictor:
    def __init__(self, settings: Settings, pool: ModelPool, store: Store, fetcher: ImageFetcher, *,
                 label_studio: LabelStudioClient | None = None) -> None:
        """With ``label_studio``, the backend keeps each project's ``model_version`` there in step and pushes the
        predictions it finishes in the background."""
        self.settings = settings
        self.pool = pool
        self.store = store
        self.fetcher = fetcher
        self.label_studio = label_studio
        self.metrics = Metrics()
        self.backfill = Backfill(pool, store, fetcher, self.metrics, label_studio)
        self.images = ImageCache(settings, fetcher)
        self._image_caching = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-cache")
        self._syncing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-sync")
        self._sync_pending: set[int] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Predictor":
        """Connect to the store and load the starting model (call it in each server process)."""
        store = Store.from_settings(settings)
        pool = ModelPool(settings, store)
        starting = pool.model_for(None)
        label_studio = LabelStudioClient.from_settings(settings) \
            if settings.label_studio_url and settings.label_studio_api_key else None
        log.info("starting model %s (model_version %s) on %s; projects with a deployed version get theirs",
                 settings.model, starting.version, starting.detector.device)
        return cls(settings, pool, store, ImageFetcher(settings), label_studio=label_studio)

    # --- routes ------------------------------------------------------------------------------------------
    def health(self) -> dict:
        """``model_version`` is the starting model's: projects may be served by their own fine-tuned version."""
        return {"status": "UP", "model_class": type(self).__name__, "model_version": self.pool.version_for(None)}

    def setup(self, body: dict) -> dict:
        """Check the label config and answer the project's model version; keep the LS project's version in step."""
        schema = _parse_config(_field(body, "schema", str))
        project_id = _project_id(body.get("project"))
        version = self.pool.version_for(project_id)
        answer: dict = {"model_version": version}
        if schema is None:
            answer["warning"] = _NOTHING_TO_DO
            log.warning("/setup for project %s: %s", project_id, _NOTHING_TO_DO)
        if project_id is not None:
            self.store.projects.set_label_config(project_id, body["schema"])
            self._keep_in_step(project_id, version)
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
        if schema is None:
            log.warning("/predict for project %s: %s", project_id, _NOTHING_TO_DO)
            return {"results": [NO_PREDICTION for _ in tasks]}
        if project_id is not None:
            self.store.projects.set_label_config(project_id, config)
        try:
            smart = smart_prompt(schema, params.get("context"))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        typed_prompt = _prompt_from_context(schema.prompt_control, params.get("context"))
        model = self.pool.model_for(project_id)  # this request keeps it, even if a new version is deployed meanwhile
        if smart is not None:  # Label Studio sends the one task being labeled
            return {"results": [self._answer_smart(task, schema, smart, model) if i == 0 else NO_PREDICTION
                                for i, task in enumerate(tasks)]}
        try:  # the job is the model's: its version's calibrated thresholds serve
            job = project_job(self.settings, self.store, schema, project_id, typed_prompt, model.calibration,
                              model.classifier)
        except PromptError as exc:
            raise RequestError(str(exc)) from None
        results = self._predict_tasks(tasks, job, model)
        if project_id is not None and any(results):
            self._keep_in_step(project_id, model.version)
        return {"results": results}

    def webhook(self, body: dict) -> dict:
        """Every event goes to the store, which also queues a training run on START_TRAINING; unknown actions
        are acknowledged and ignored. Newly labeled tasks get their images cached in the background."""
        try:
            outcome = self.store.ingest(body)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        log.info("webhook %s: %s", outcome.action, outcome.message)
        for task_id in outcome.labeled_task_ids:
            self._image_caching.submit(self._cache_image, task_id)
        status = "ok" if outcome.handled else "ignored"
        return {"status": status, "action": outcome.action, "message": outcome.message}

    def status(self) -> dict:
        """What ``GET /status`` shows: per project, what serves it, its training runs, versions and corrections."""
        return collect_status(self.store, serving_version=self.pool.version_for, costs=self.settings.action_costs())

    # --- the work ----------------------------------------------------------------------------------------
    def _predict_tasks(self, tasks: list[dict], job: Job, model: LoadedModel) -> list:
        deadline = time.monotonic() + self.settings.predict_budget_seconds
        results: list = [NO_PREDICTION] * len(tasks)
        skipped = []
        for answer in predict_tasks(self.settings, model, self.fetcher, self.store, tasks, job, deadline):
            if answer.prediction is not None:
                self.metrics.count("cache_hits" if answer.from_store else "predictions")
                results[answer.index] = answer.prediction
            elif answer.over_budget:
                skipped.append(answer.task)
            else:
                log.warning("task %s: %s; no prediction", answer.task.get("id"), answer.error)
                self.metrics.count("failures")
        if skipped:
            self.metrics.count("skipped_over_budget", len(skipped))
            log.warning("/predict budget of %.0f s spent: %d task(s) answered without prediction, finished in the "
                        "background: %s", self.settings.predict_budget_seconds, len(skipped),
                        [task.get("id") for task in skipped])
            self.backfill.submit(skipped, job)
        return results

    def _answer_smart(self, task: dict, schema: ProjectSchema, prompt: SmartPrompt, model: LoadedModel) -> Any:
        try:
            return predict_smart_prompt(model, self.fetcher, task, schema, prompt, self.settings.segmenter)
        except PredictionError as exc:
            log.warning("task %s: smart prompt not answered: %s", task.get("id"), exc)
            self.metrics.count("failures")
            return NO_PREDICTION

    def _cache_image(self, task_id: int) -> None:
        try:
            cache_task_image(self.store, self.images, task_id)
        except Exception as exc:  # noqa: BLE001 - training fetches it again, or reports it
            log.warning("task %d: image not cached: %s", task_id, exc)

    def _keep_in_step(self, project_id: int, version: str) -> None:
        """Point the Label Studio project at ``version``, in the background (/setup has 3 s).

        Label Studio refuses a ``model_version`` no prediction of the project carries yet ("doesn't exist either
        as live model or as static predictions"), and it stores our predictions only after /predict answered:
        hence the retries, and the call after every /predict too.
        """
        if self.label_studio is None or project_id in self._sync_pending:
            return
        self._sync_pending.add(project_id)
        self._syncing.submit(self._sync_with_retries, project_id, version)

    def _sync_with_retries(self, project_id: int, version: str) -> None:
        try:
            for delay in SYNC_RETRY_DELAYS:
                time.sleep(delay)
                try:
                    if self.label_studio.get_project(project_id).get("model_version") != version:
                        self.label_studio.set_project_model_version(project_id, version)
                    self.store.projects.set_model_version(project_id, version)
                    return
                except Exception as exc:  # Label Studio down, key wrong, or no prediction of ours there yet
                    error = str(exc)[:300]
            log.warning("could not set model_version of Label Studio project %s: %s", project_id, error)
        finally:
            self._sync_pending.discard(project_id)


SYNC_RETRY_DELAYS = (0.0, 1.0, 2.0, 4.0, 8.0)
"""Seconds before each attempt to set the Label Studio project's model_version."""
_NOTHING_TO_DO = ("the label config has no <RectangleLabels>, <BrushLabels> or <PolygonLabels> on an <Image>: "
                  "groundloop has nothing to pre-annotate")


def _prompt_from_context(control: PromptControl | None, context: Any) -> str | None:
    """The text the annotator typed into the prompt TextArea, if this request carries it."""
    if control is None or not isinstance(context, dict) or not isinstance(context.get("result"), list):
        return None
    for item in context["result"]:
        if isinstance(item, dict) and item.get("from_name") == control.name and item.get("type") == "textarea":
            value = item.get("value")
            text = value.get("text") if isinstance(value, dict) else None
            lines = text if isinstance(text, list) else [text]
            prompt = " ".join(line.strip() for line in lines if isinstance(line, str) and line.strip())
            return prompt or None
    return None


def _parse_config(xml: str) -> ProjectSchema | None:
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
    """Label Studio sends ``"<project id>.<created_at epoch>"``; None when absent or not of that form (ASCII
    digits only, an id the store can hold)."""
    found = _PROJECT_ID.match(raw) if isinstance(raw, str) else None
    project_id = int(found.group(1)) if found else raw if isinstance(raw, int) and not isinstance(raw, bool) else 0
    return project_id if 0 < project_id < MAX_ID else None


_PROJECT_ID = re.compile(r"([0-9]{1,10})(?:\.[0-9]*)?\Z")
