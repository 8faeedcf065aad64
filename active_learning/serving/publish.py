"""After a promotion: the new version's predictions of a project's unlabeled tasks, handed to Label Studio."""

from __future__ import annotations

import logging

from active_learning.images import ImageFetcher
from active_learning.labelstudio.client import LabelStudioClient
from active_learning.labelstudio.config import parse_label_config
from active_learning.serving.jobs import project_job
from active_learning.serving.pool import LoadedModel
from active_learning.serving.predict import PredictionError
from active_learning.serving.tasks import predict_tasks
from active_learning.settings import Settings
from active_learning.store import Store

log = logging.getLogger(__name__)


def publish_to_label_studio(settings: Settings, store: Store, client: LabelStudioClient, model: LoadedModel,
                            project_id: int, fetcher: ImageFetcher | None = None) -> int:
    """Predict every unlabeled task of the project with ``model``, push the predictions to Label Studio, then
    point the project's ``model_version`` at the model (Label Studio refuses a version no prediction carries,
    hence this order). Returns how many predictions were pushed; a task that fails is logged and left out.
    """
    config = client.get_project(project_id).get("label_config") or ""
    schema = parse_label_config(config)
    if schema is None:
        log.warning("project %d: the label config has nothing to pre-annotate", project_id)
        return 0
    store.projects.set_label_config(project_id, config)
    job = project_job(settings, store, schema, project_id, calibration=model.calibration,
                      classifier=model.classifier)
    fetcher = fetcher or ImageFetcher(settings)
    tasks = client.unlabeled_tasks(project_id)
    log.info("project %d: predicting %d unlabeled tasks with %s", project_id, len(tasks), model.version)
    pushed = 0
    for n, answer in enumerate(predict_tasks(settings, model, fetcher, store, tasks, job), 1):
        task = answer.task
        try:
            if answer.prediction is None:
                raise PredictionError(answer.error)
            client.create_prediction(task["id"], answer.prediction)
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
    store.projects.set_model_version(project_id, model.version)
    log.info("project %d: Label Studio's model_version is now %s", project_id, model.version)
    return pushed
