"""``kill -9`` of the training worker (``groundloop worker``, a real process) while it writes a checkpoint and while
it trains, then a round with Label Studio down: the deployed version keeps serving, the database stays intact,
the killed rounds are failed once their lease expires, and a later round (on the stored data) deploys."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from active_learning.serving.pool import ModelPool
from active_learning.training.registry import checkpoint_name
from active_learning.settings import Settings
from active_learning.store import Store
from active_learning.training.worker import Worker
from tests.support.backend import deploy_copy, wait_for
from tests.support.net import free_port
from tests.support.training import PROJECT, TOKEN, annotation_webhook

pytestmark = pytest.mark.slow

LABELED = 8
LEASE_SECONDS = 2.0
SEED_VERSION = "groundloop-p7-seed"


@pytest.fixture
def settings(tmp_path: Path, small_model_dir: Path, media_url: str) -> Settings:
    """A tiny round: 8 images of 64 px, 2 epochs; any candidate is deployed (the margin is negative)."""
    return Settings(
        data_dir=tmp_path / "data", model=str(small_model_dir), device="cpu", image_size=64,
        label_studio_url=media_url, label_studio_api_key=TOKEN, epochs=2, batch_size=4,
        learning_rate=1e-3, patience=3, val_fraction=0.25, val_min=2, promotion_margin=-1.0,
        train_min_new_annotations=1000, lease_seconds=LEASE_SECONDS, log_level="INFO",
    )


def _worker_process(settings: Settings, log_path: Path) -> subprocess.Popen:
    flags = []
    for name in ("data_dir", "model", "device", "image_size", "label_studio_url", "label_studio_api_key", "epochs",
                 "batch_size", "learning_rate", "patience", "val_fraction", "val_min", "promotion_margin",
                 "train_min_new_annotations", "lease_seconds", "log_level"):
        flags += ["--" + name.replace("_", "-"), str(getattr(settings, name))]
    with open(log_path, "ab") as log:
        return subprocess.Popen([str(Path(sys.executable).parent / "groundloop"), "worker", *flags], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _half_written(staging: Path, run_id: int) -> bool:
    """A checkpoint being written: ``fit`` writes ``.<name>.tmp`` and renames it when complete."""
    return any(staging.glob(f"run-{run_id}/.*.tmp"))


def test_kill_9_of_the_worker_then_a_round_without_label_studio(settings, shapes, ls_request, caplog,
                                                                 small_model_dir, figures):
    store = Store.from_settings(settings)
    for index in range(LABELED):
        assert store.ingest(annotation_webhook(ls_request, index, shapes[index])).handled
    deploy_copy(settings, store, small_model_dir, PROJECT, SEED_VERSION)
    staging = settings.models_dir / ".staging"
    log_path = settings.data_dir / "worker.log"
    killed = {}

    for moment in ("checkpoint write", "training"):
        run_id = store.runs.request(PROJECT, "test")
        worker = _worker_process(settings, log_path)
        try:
            if moment == "checkpoint write":
                deadline = time.monotonic() + 240
                while not _half_written(staging, run_id) and time.monotonic() < deadline and worker.poll() is None:
                    time.sleep(0.005)
            else:
                wait_for(lambda: store.runs.get(run_id).epochs, timeout=240, what="the first epoch")
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        assert worker.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]
        killed[moment] = {"run": run_id, "epochs_done": len(store.runs.get(run_id).epochs),
                          "checkpoint_half_written": _half_written(staging, run_id)}

        assert store.runs.get(run_id).status == "running"  # until its lease runs out
        time.sleep(LEASE_SECONDS + 0.5)
        assert store.runs.claim("probe", LEASE_SECONDS, project_id=PROJECT) is None  # nothing queued
        run = store.runs.get(run_id)
        assert run.status == "failed" and "lease expired" in run.error
        assert store.models.deployed(PROJECT).name == SEED_VERSION
        assert store.models.get(checkpoint_name(PROJECT, run_id)) is None
        assert not (settings.models_dir / checkpoint_name(PROJECT, run_id)).exists()
        assert ModelPool(settings, store).model_for(PROJECT).version == SEED_VERSION  # loads and serves
        with sqlite3.connect(settings.data_dir / "groundloop.db") as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # Label Studio (and its media) down: the round trains on the stored annotations and the cached images
    down = replace(settings, label_studio_url=f"http://127.0.0.1:{free_port()}")
    caplog.set_level(logging.INFO)
    store.runs.request(PROJECT, "test")
    outcome = Worker(down, store).run_once(project_id=PROJECT)
    assert outcome.status == "succeeded", outcome.error
    assert not any(staging.iterdir()), "the killed rounds' half-written checkpoints are removed"
    assert "Label Studio sync failed" in caplog.text
    assert store.models.deployed(PROJECT).name == outcome.model_version
    assert ModelPool(down, store).model_for(PROJECT).version == outcome.model_version
    figures["worker_kill"] = killed
    figures["round_with_label_studio_down"] = outcome.status
