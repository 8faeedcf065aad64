"""End to end: a real Label Studio 1.23.2 and the real server (``groundloop serve``, gunicorn) with the small model.

Walks what a user does: create a project, upload images, connect the backend, "Retrieve predictions",
annotate (create, update, delete), "Start training" (the worker ``serve`` started runs the round), then label
with uncertainty sampling; ``groundloop sync`` pulling a project into the store; stopping the server.
The small model has random weights: thresholds of 0 make sure it still draws boxes (at most 3 per image).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from active_learning.store import Store
from tests.support.backend import CONFIG, Server, groundloop_serve, png_bytes, wait_for

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

IMAGE_SIZES = [(64, 48), (80, 60), (50, 70)]


@pytest.fixture(scope="module")
def backend(tmp_path_factory, small_model_dir, label_studio):
    """``groundloop serve`` (with its training worker) talking to the test Label Studio."""
    workdir = tmp_path_factory.mktemp("backend")
    flags = ["--workers", "1", "--threads", "4", "--model", str(small_model_dir),
             "--box-threshold", "0.0", "--text-threshold", "0.0", "--max-detections", "3",
             "--label-studio-url", label_studio.url, "--label-studio-api-key", label_studio.api_key]
    with groundloop_serve(workdir, *flags) as server:
        store = Store(f"sqlite:///{(workdir / 'groundloop.db').resolve()}")
        yield _Backend(server.url, server.model_version, store, workdir, server)


@dataclass
class _Backend:
    url: str
    model_version: str
    store: Store
    data_dir: Path
    server: Server


def test_label_studio_round_trip(label_studio, backend):
    ls = label_studio
    project = ls.api("POST", "/api/projects", json={"title": "e2e", "label_config": CONFIG}).json()
    pid = project["id"]
    files = {f"file{i}": (f"img{i}.png", png_bytes(size, i), "image/png") for i, size in enumerate(IMAGE_SIZES)}
    ls.api("POST", f"/api/projects/{pid}/import", files=files)
    tasks = ls.api("GET", f"/api/tasks?project={pid}&fields=all").json()["tasks"]
    assert len(tasks) == len(IMAGE_SIZES)
    # relative URLs: the backend's fetcher resolves them against Label Studio, with its key
    assert all(t["data"]["image"].startswith(f"/data/upload/{pid}/") for t in tasks)

    connect = {"url": backend.url, "project": pid, "title": "groundloop", "is_interactive": True}
    ml = ls.api("POST", "/api/ml", json=connect).json()
    assert ml["readable_state"] == "Connected", ml

    # Data Manager "Retrieve predictions" on every task: one /predict call
    ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
           json={"selectedItems": {"all": True, "excluded": []}})
    predictions = ls.api("GET", f"/api/predictions?project={pid}").json()
    by_task = {t["id"]: [p for p in predictions if p["task"] == t["id"]] for t in tasks}
    for task_id, task_predictions in by_task.items():
        assert len(task_predictions) == 1, f"task {task_id}: {task_predictions}"
        prediction = task_predictions[0]
        assert prediction["model_version"] == backend.model_version
        assert 0.0 <= prediction["score"] <= 1.0
        assert prediction["result"], "thresholds of 0 must give boxes"
        for region in prediction["result"]:
            value = region["value"]
            assert value["rectanglelabels"][0] in ("cat", "dog")
            assert 0 <= value["x"] and value["x"] + value["width"] <= 100 + 1e-6
            assert 0 <= value["y"] and value["y"] + value["height"] <= 100 + 1e-6
    served = {t["id"]: backend.store.predictions.served(t["id"], backend.model_version) for t in tasks}
    assert all(len(rows) == 1 for rows in served.values())

    # the backend points the project at its model version (after /setup, in the background)
    wait_for(lambda: ls.api("GET", f"/api/projects/{pid}").json()["model_version"] == backend.model_version,
             timeout=20, what="project model_version in step")

    # annotate: the webhooks reach the store
    first = tasks[0]["id"]
    region = {
        "from_name": "label", "to_name": "image", "type": "rectanglelabels",
        "original_width": IMAGE_SIZES[0][0], "original_height": IMAGE_SIZES[0][1],
        "value": {"x": 10, "y": 10, "width": 50, "height": 40, "rotation": 0, "rectanglelabels": ["dog"]},
    }
    annotation = ls.api("POST", f"/api/tasks/{first}/annotations", json={"result": [region]}).json()
    stored = wait_for(lambda: backend.store.annotations.get(annotation["id"]), timeout=20, what="ANNOTATION_CREATED")
    assert stored.boxes[0]["label"] == "dog"
    # its image is cached in the background (from Label Studio, with its key): training needs no Label Studio
    wait_for(lambda: backend.store.tasks.get(first).image_sha256, timeout=20, what="image of the annotated task cached")

    region["value"]["rectanglelabels"] = ["cat"]
    ls.api("PATCH", f"/api/annotations/{annotation['id']}", json={"result": [region]})
    wait_for(lambda: backend.store.annotations.get(annotation["id"]).boxes[0]["label"] == "cat",
             timeout=20, what="ANNOTATION_UPDATED")

    ls.api("DELETE", f"/api/annotations/{annotation['id']}")
    wait_for(lambda: backend.store.annotations.get(annotation["id"]).deleted, timeout=20, what="ANNOTATIONS_DELETED")

    # "Start training" queues a round; the worker beside the server runs it: nothing is labeled now, so it fails
    ls.api("POST", f"/api/ml/{ml['id']}/train", json={})
    (run,) = wait_for(lambda: backend.store.runs.of_project(pid), timeout=20, what="START_TRAINING")
    assert run.trigger == "webhook"
    run = wait_for(lambda: backend.store.runs.get(run.id).status == "failed"
                   and backend.store.runs.get(run.id), timeout=60, what="the worker ran the round")
    assert "0 training and 0 validation images" in run.error

    # uncertainty sampling serves the task the model is least sure about (lowest score) first
    ls.api("PATCH", f"/api/projects/{pid}", json={"sampling": "Uncertainty sampling"})
    scores = {task_id: rows[0]["score"] for task_id, rows in by_task.items()}
    next_task = ls.api("GET", f"/api/projects/{pid}/next").json()
    assert scores[next_task["id"]] == min(scores.values()), (next_task["id"], scores)


def test_sync_command_pulls_a_project(label_studio, backend):
    project = label_studio.api("POST", "/api/projects", json={"title": "sync", "label_config": CONFIG}).json()
    files = {"a": ("a.png", png_bytes((40, 30), 7), "image/png"), "b": ("b.png", png_bytes((30, 40), 8), "image/png")}
    label_studio.api("POST", f"/api/projects/{project['id']}/import", files=files)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "groundloop"), "sync", "--project", str(project["id"]),
         "--data-dir", str(backend.data_dir), "--label-studio-url", label_studio.url,
         "--label-studio-api-key", label_studio.api_key],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "tasks=2" in done.stdout
    assert len(backend.store.tasks.ids(project["id"])) == 2


def test_stopping_the_server_stops_its_worker(backend):
    """Last in this module: it stops the server."""
    log = backend.server.log_path.read_text()
    worker_pid = int(re.search(r"training worker \S+:(\d+):\d+ started", log).group(1))
    os.kill(worker_pid, 0)  # running
    backend.server.process.send_signal(signal.SIGTERM)
    backend.server.process.wait(timeout=60)
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
