"""Predictions handed to a real Label Studio 1.23.2 through its API: the tasks a /predict had no time for, and
the unlabeled tasks after a promotion (then the project's ``model_version`` follows the new version)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from active_learning.images import ImageFetcher
from active_learning.labelstudio.client import LabelStudioClient
from active_learning.serving.pool import ModelPool
from active_learning.training.worker import Worker
from backend.app import create_app
from backend.predictor import Predictor

from tests.support.backend import CONFIG, IMAGE_SIZE, assert_prediction, deploy_copy, png_bytes

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

@pytest.fixture
def ls_settings(settings, label_studio):
    return replace(settings, label_studio_url=label_studio.url, label_studio_api_key=label_studio.api_key)

def _project_with_images(ls, count: int) -> tuple[int, list[dict]]:
    project = ls.api("POST", "/api/projects", json={"title": "pushed", "label_config": CONFIG}).json()
    files = {f"file{i}": (f"img{i}.png", png_bytes(IMAGE_SIZE, i), "image/png") for i in range(count)}
    ls.api("POST", f"/api/projects/{project['id']}/import", files=files)
    return project["id"], ls.api("GET", f"/api/tasks?project={project['id']}&fields=all").json()["tasks"]

def _predictions(ls, pid: int) -> dict[int, list[dict]]:
    by_task: dict[int, list[dict]] = {}
    for prediction in ls.api("GET", f"/api/predictions?project={pid}").json():
        by_task.setdefault(prediction["task"], []).append(prediction)
    return by_task

def test_tasks_over_the_budget_reach_label_studio_from_the_background(label_studio, ls_settings, store, detector,
                                                                     model_version):
    pid, tasks = _project_with_images(label_studio, 2)
    settings = replace(ls_settings, predict_budget_seconds=0.0)
    predictor = Predictor(settings, ModelPool(settings, store, starting=detector), store, ImageFetcher(settings),
                          label_studio=LabelStudioClient.from_settings(settings))
    body = {"tasks": tasks, "label_config": CONFIG, "project": f"{pid}.1", "params": {}}
    answer = create_app(settings, predictor).test_client().post("/predict", json=body)
    assert answer.json["results"] == [[], []]

    predictor.backfill.wait()
    pushed = _predictions(label_studio, pid)
    assert sorted(pushed) == sorted(t["id"] for t in tasks)
    for (prediction,) in pushed.values():
        assert_prediction(prediction, model_version)

def test_after_a_promotion_label_studio_holds_the_new_versions_predictions(label_studio, ls_settings, store,
                                                                           small_model_dir):
    pid, tasks = _project_with_images(label_studio, 3)
    labeled, *unlabeled = tasks
    region = {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": IMAGE_SIZE[0],
              "original_height": IMAGE_SIZE[1],
              "value": {"x": 10, "y": 10, "width": 50, "height": 40, "rotation": 0, "rectanglelabels": ["dog"]}}
    label_studio.api("POST", f"/api/tasks/{labeled['id']}/annotations", json={"result": [region]})
    deploy_copy(ls_settings, store, small_model_dir, pid, f"groundloop-p{pid}-r1")

    Worker(ls_settings, store).publish(pid)

    pushed = _predictions(label_studio, pid)
    assert sorted(pushed) == sorted(t["id"] for t in unlabeled)  # the labeled task gets none
    for (prediction,) in pushed.values():
        assert_prediction(prediction, f"groundloop-p{pid}-r1")
    project = label_studio.api("GET", f"/api/projects/{pid}").json()
    assert project["model_version"] == f"groundloop-p{pid}-r1"
    assert store.projects.get(pid).model_version == f"groundloop-p{pid}-r1"
