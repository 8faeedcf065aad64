"""Several machines, one PostgreSQL and one shared data directory: two ``groundloop serve`` processes and two
``groundloop worker`` processes (the real CLI, as a deployment runs them) against one real PostgreSQL.

Webhooks reach either server (some both, as a retried delivery would): no annotation is lost or stored twice.
Rounds are asked for through both servers at once: the database's lease lets one round per project run at a
time. The version a worker registers (its path relative to the data dir) is loaded by both servers, which answer
with it at the next request, without a restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import requests

from active_learning.store import Store
from tests.support.backend import groundloop_serve, wait_for
from tests.support.postgres import create_database
from tests.support.training import LABEL_CONFIG, PROJECT, TOKEN, annotation_webhook

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TASKS = 12
GROUNDLOOP = str(Path(sys.executable).parent / "groundloop")


@contextmanager
def groundloop_worker(data_dir: Path, *flags: str) -> Iterator[subprocess.Popen]:
    log = open(data_dir / f"worker-{os.urandom(3).hex()}.log", "wb")
    process = subprocess.Popen([GROUNDLOOP, "worker", "--data-dir", str(data_dir), "--device", "cpu", *flags],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_two_servers_and_two_workers_share_one_postgresql_and_one_data_dir(postgres_server, small_model_dir,
                                                                          shapes, media_url, ls_request, tmp_path):
    database = create_database(postgres_server)
    data_dir = tmp_path / "shared-data"
    data_dir.mkdir()
    common = ["--database-url", database, "--model", str(small_model_dir), "--box-threshold", "0.0",
              "--text-threshold", "0.0", "--max-detections", "5", "--label-studio-url", media_url,
              "--label-studio-api-key", TOKEN, "--image-size", "64", "--epochs", "1", "--val-min", "2",
              "--measure-min-annotations", "0", "--train-min-new-annotations", "100000"]
    store = Store(database)
    with ExitStack() as running:
        servers = [running.enter_context(groundloop_serve(data_dir, "--no-worker", *common)) for _ in range(2)]
        for _ in range(2):
            running.enter_context(groundloop_worker(data_dir, *common))

        # every annotation to one of the servers, every third to both (a delivery Label Studio retried)
        for i in range(TASKS):
            body = annotation_webhook(ls_request, i, shapes[i])
            for server in [servers[i % 2]] + ([servers[1 - i % 2]] if i % 3 == 0 else []):
                assert requests.post(server.url + "/webhook", json=body, timeout=30).status_code == 200
        labeled = store.tasks.labeled(PROJECT)
        assert sorted(t.task_id for t in labeled) == list(range(1, TASKS + 1))
        assert len(store.annotations.of_project(PROJECT)) == TASKS  # none lost, none twice

        # both servers are asked for a round at the same moment; both workers poll for it
        start = ls_request("webhook_start_training")
        start["project"].update(id=PROJECT, label_config=LABEL_CONFIG)
        for server in servers:
            assert requests.post(server.url + "/webhook", json=start, timeout=30).status_code == 200
        wait_for(lambda: (runs := store.runs.of_project(PROJECT)) and all(
            r.status not in ("queued", "running") for r in runs), timeout=600, what="the rounds of both workers")
        runs = sorted(store.runs.of_project(PROJECT), key=lambda r: r.started_at)
        # one round, or two if the second request came after the first round was claimed: never two at once
        assert 1 <= len(runs) <= 2 and all(r.status in ("succeeded", "rejected") for r in runs), \
            [(r.status, r.error) for r in runs]
        assert all(earlier.finished_at <= later.started_at for earlier, later in zip(runs, runs[1:]))
        run = runs[-1]
        assert run.train_size + run.val_size == TASKS

        # the version one worker registered: deployed (or, if the round lost to the starting model, rolled out by
        # hand on yet another "machine"), then served by both servers without a restart
        version = store.models.get(run.model_version)
        assert version.path == f"models/{run.model_version}"  # relative: any machine mounting data_dir loads it
        if run.status == "rejected":
            done = subprocess.run([GROUNDLOOP, "rollback", "--project", str(PROJECT), "--to", run.model_version,
                                   "--data-dir", str(data_dir), "--database-url", database],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        body = {"tasks": [{"id": 500, "data": {"image": f"/data/upload/{PROJECT}/20.png"}}],
                "label_config": LABEL_CONFIG, "project": f"{PROJECT}.1"}
        for server in servers:
            answer = requests.post(server.url + "/predict", json=body, timeout=120).json()
            assert answer["results"][0]["model_version"] == run.model_version
            assert requests.post(server.url + "/setup", json={"schema": LABEL_CONFIG, "project": f"{PROJECT}.1"},
                                 timeout=30).json()["model_version"] == run.model_version
