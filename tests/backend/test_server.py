"""The real server (``groundloop serve``: gunicorn, the small model, images from the local media server): a version
deployed while it runs answers the next request, without a restart and without failing requests in flight.
(The training worker that ``serve`` starts beside it is tested in test_end_to_end.py.)"""

from __future__ import annotations

import threading

import pytest
import requests

from active_learning.settings import Settings
from active_learning.store import Store

from tests.support.backend import TOKEN, deploy_copy, groundloop_serve, wait_for

pytestmark = pytest.mark.slow

NEW_VERSION = "groundloop-p1-r1"


def _predict(url: str, body: dict, images: list[str]) -> requests.Response:
    tasks = [{"id": None, "data": {"image": image}} for image in images]
    return requests.post(url + "/predict", json={**body, "tasks": tasks}, timeout=120)


def test_a_deployed_version_answers_without_a_restart_and_requests_in_flight_succeed(
        tmp_path, small_model_dir, media, ls_request):
    # 3 clients plus the request after the deploy: 4 predictions at once, below the 5 threads
    flags = ["--no-worker", "--workers", "1", "--threads", "5", "--max-pending-predicts", "4",
             "--model", str(small_model_dir),
             "--image-size", "128", "--box-threshold", "0.0", "--text-threshold", "0.0", "--max-detections", "3",
             "--label-studio-url", media.url, "--label-studio-api-key", TOKEN]
    body = ls_request("predict_retrieve_predictions")
    with groundloop_serve(tmp_path, *flags) as server:
        old = server.model_version
        assert requests.post(server.url + "/setup", json=ls_request("setup"), timeout=10).json()["model_version"] == old
        first = _predict(server.url, body, ["/data/upload/1/a.png"]).json()["results"]
        assert first[0]["model_version"] == old

        # clients keep predicting new images (no answer from the store) while the version changes
        answers: list[list[tuple[int, list]]] = [[] for _ in range(3)]
        stop = threading.Event()

        def keep_predicting(client: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                response = _predict(server.url, body, [f"/data/upload/1/c{client}-{n}.png"])
                results = response.json().get("results") if response.ok else None
                answers[client].append((response.status_code, results))

        clients = [threading.Thread(target=keep_predicting, args=(i,)) for i in range(len(answers))]
        for thread in clients:
            thread.start()
        try:
            wait_for(lambda: all(answers), timeout=60, what="every client answered once")
            deploy_copy(Settings(data_dir=tmp_path), Store.from_settings(Settings(data_dir=tmp_path)),
                        small_model_dir, project_id=1, name=NEW_VERSION)
            after = _predict(server.url, body, ["/data/upload/1/after.png"]).json()["results"]
            assert after[0]["model_version"] == NEW_VERSION  # the very next request
            wait_for(lambda: all(a[-1][1] and a[-1][1][0]["model_version"] == NEW_VERSION for a in answers),
                     timeout=60, what="every client answered by the new version")
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=120)

        for client_answers in answers:
            assert all(status == 200 and len(results) == 1 and results[0]["result"]
                       for status, results in client_answers), client_answers
            versions = [results[0]["model_version"] for _, results in client_answers]
            assert versions[0] == old and versions[-1] == NEW_VERSION
            assert versions == sorted(versions, key=lambda v: v == NEW_VERSION), "never back to the old version"
        other_project = {**body, "project": "2.1795301709"}
        assert _predict(server.url, other_project, ["/data/upload/2/x.png"]).json()["results"][0][
            "model_version"] == old
        health = requests.get(server.url + "/status", timeout=10).json()
        assert {p["project"]: p["serving_version"] for p in health["projects"]} == {1: NEW_VERSION, 2: old}
