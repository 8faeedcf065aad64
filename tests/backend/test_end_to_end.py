"""End to end: a real Label Studio 1.23.2 and the real server (``groundloop serve``, gunicorn) with the small model.

Walks what a user does: create a project, upload images, connect the backend, "Retrieve predictions",
annotate (create, update, delete), "Start training", then label with uncertainty sampling; and
``groundloop sync`` pulling a project into the store.
The small model has random weights: thresholds of 0 make sure it still draws boxes (at most 3 per image).
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import requests
from PIL import Image, ImageDraw

from active_learning.store import Store
from tests.labelstudio import free_port

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image">'
    '<Label value="cat"/><Label value="dog" predicted_values="puppy,hound"/>'
    "</RectangleLabels></View>"
)
IMAGE_SIZES = [(64, 48), (80, 60), (50, 70)]


@pytest.fixture(scope="module")
def backend(tmp_path_factory, small_model_dir, label_studio):
    """``groundloop serve`` on a free port, talking to the test Label Studio; stopped by its pid at the end."""
    workdir = tmp_path_factory.mktemp("backend")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "groundloop"), "serve",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--threads", "4",
        "--model", str(small_model_dir), "--device", "cpu", "--data-dir", str(workdir),
        "--box-threshold", "0.0", "--text-threshold", "0.0", "--max-detections", "3",
        "--label-studio-url", label_studio.url, "--label-studio-api-key", label_studio.api_key,
    ]
    log_path = workdir / "groundloop.log"
    with open(log_path, "wb") as log:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        health = _wait_for(lambda: _health(url, process, log_path), timeout=180, what="groundloop serve")
        store = Store(f"sqlite:///{(workdir / 'groundloop.db').resolve()}")
        yield _Backend(url, health["model_version"], store, workdir)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@dataclass
class _Backend:
    url: str
    model_version: str
    store: Store
    data_dir: Path


def _health(url: str, process: subprocess.Popen, log_path: Path) -> dict | None:
    if process.poll() is not None:
        raise AssertionError(f"groundloop serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
    try:
        answer = requests.get(url + "/health", timeout=2)
    except requests.RequestException:
        return None
    return answer.json() if answer.status_code == 200 else None


def _wait_for(check: Callable[[], object], timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _png(size: tuple[int, int], seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
        draw.rectangle([x, y, x + size[0] // 3, y + size[1] // 3], fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_label_studio_round_trip(label_studio, backend):
    ls = label_studio
    project = ls.api("POST", "/api/projects", json={"title": "e2e", "label_config": CONFIG}).json()
    pid = project["id"]
    files = {f"file{i}": (f"img{i}.png", _png(size, i), "image/png") for i, size in enumerate(IMAGE_SIZES)}
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
    served = {t["id"]: backend.store.served_predictions(t["id"], backend.model_version) for t in tasks}
    assert all(len(rows) == 1 for rows in served.values())

    # the backend points the project at its model version (after /setup, in the background)
    _wait_for(lambda: ls.api("GET", f"/api/projects/{pid}").json()["model_version"] == backend.model_version,
              timeout=20, what="project model_version in step")

    # annotate: the webhooks reach the store
    first = tasks[0]["id"]
    region = {
        "from_name": "label", "to_name": "image", "type": "rectanglelabels",
        "original_width": IMAGE_SIZES[0][0], "original_height": IMAGE_SIZES[0][1],
        "value": {"x": 10, "y": 10, "width": 50, "height": 40, "rotation": 0, "rectanglelabels": ["dog"]},
    }
    annotation = ls.api("POST", f"/api/tasks/{first}/annotations", json={"result": [region]}).json()
    stored = _wait_for(lambda: backend.store.get_annotation(annotation["id"]), timeout=20, what="ANNOTATION_CREATED")
    assert stored.boxes[0]["label"] == "dog"

    region["value"]["rectanglelabels"] = ["cat"]
    ls.api("PATCH", f"/api/annotations/{annotation['id']}", json={"result": [region]})
    _wait_for(lambda: backend.store.get_annotation(annotation["id"]).boxes[0]["label"] == "cat",
              timeout=20, what="ANNOTATION_UPDATED")

    ls.api("DELETE", f"/api/annotations/{annotation['id']}")
    _wait_for(lambda: backend.store.get_annotation(annotation["id"]).deleted, timeout=20, what="ANNOTATIONS_DELETED")

    # "Start training" queues a run
    ls.api("POST", f"/api/ml/{ml['id']}/train", json={})
    _wait_for(lambda: [r for r in backend.store.training_runs(pid) if r.status == "queued"], timeout=20,
              what="START_TRAINING")

    # uncertainty sampling serves the task the model is least sure about (lowest score) first
    ls.api("PATCH", f"/api/projects/{pid}", json={"sampling": "Uncertainty sampling"})
    scores = {task_id: rows[0]["score"] for task_id, rows in by_task.items()}
    next_task = ls.api("GET", f"/api/projects/{pid}/next").json()
    assert scores[next_task["id"]] == min(scores.values()), (next_task["id"], scores)


def test_sync_command_pulls_a_project(label_studio, backend):
    project = label_studio.api("POST", "/api/projects", json={"title": "sync", "label_config": CONFIG}).json()
    files = {"a": ("a.png", _png((40, 30), 7), "image/png"), "b": ("b.png", _png((30, 40), 8), "image/png")}
    label_studio.api("POST", f"/api/projects/{project['id']}/import", files=files)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "groundloop"), "sync", "--project", str(project["id"]),
         "--data-dir", str(backend.data_dir), "--label-studio-url", label_studio.url,
         "--label-studio-api-key", label_studio.api_key],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "tasks=2" in done.stdout
    assert len(backend.store.task_ids(project["id"])) == 2
