"""Load is shed, not queued, with the DEFAULT threads and pending-predict settings: 16 concurrent /predict calls
against the real server (gunicorn) get some 503s with Retry-After at once, and /health keeps answering within
Label Studio's 1 s while they run."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.support.backend import CONFIG, groundloop_serve

pytestmark = pytest.mark.slow

CONCURRENT = 16


def test_sixteen_concurrent_predicts_are_shed_and_health_stays_fast(tmp_path, small_model_dir, media):
    flags = ["--no-worker", "--model", str(small_model_dir), "--box-threshold", "0", "--text-threshold", "0",
             "--label-studio-url", media.url, "--label-studio-api-key", "test-token"]
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(1, 9)]
    with groundloop_serve(tmp_path, *flags) as server:
        answers: list[requests.Response] = []
        health_seconds: list[float] = []
        done = threading.Event()

        def predict(n: int) -> None:
            body = {"tasks": [{**t, "id": t["id"] + 100 * n} for t in tasks], "label_config": CONFIG,
                    "project": f"{n + 1}.0"}  # a project each: nothing comes from the prediction cache
            answers.append(requests.post(server.url + "/predict", json=body, timeout=120))

        def watch_health() -> None:
            while not done.is_set():
                started = time.monotonic()
                assert requests.get(server.url + "/health", timeout=5).status_code == 200
                health_seconds.append(time.monotonic() - started)
                time.sleep(0.1)

        watcher = threading.Thread(target=watch_health)
        watcher.start()
        callers = [threading.Thread(target=predict, args=(n,)) for n in range(CONCURRENT)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        done.set()
        watcher.join()

    statuses = sorted(a.status_code for a in answers)
    assert len(statuses) == CONCURRENT and set(statuses) == {200, 503}, statuses
    assert all(a.headers.get("Retry-After") for a in answers if a.status_code == 503)
    assert health_seconds and max(health_seconds) < 1.0, health_seconds
