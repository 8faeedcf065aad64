"""Training rounds end to end on the store: promote when better, reject when not, survive a crash,
schedule after K annotations, one round per project at a time."""

from __future__ import annotations

import json
import threading

import pytest

from active_learning.serving.pool import serving_model
from active_learning.training.registry import rollback
from active_learning.training.rounds import run_round
from active_learning.store import Store
from active_learning.training.worker import Worker
from tests.support.training import PROJECT, annotation_webhook, with_settings


def _queued_round(store: Store, worker: Worker) -> int:
    run_id = store.runs.request(PROJECT, "test")
    claimed = store.runs.claim(worker.owner, project_id=PROJECT)
    assert claimed is not None and claimed.id == run_id
    return run_id


@pytest.mark.slow  # real fine-tuning
def test_a_round_beats_the_starting_model_and_is_deployed(settings, labeled_store):
    worker = Worker(settings, labeled_store)
    assert serving_model(labeled_store, settings, PROJECT).version is None

    outcome = worker.run_once(project_id=PROJECT)

    run = labeled_store.runs.get(outcome.run_id)
    assert outcome.status == "succeeded", (run.error, run.epochs, outcome.report and outcome.report.baseline)
    assert run.status == "succeeded" and run.train_size + run.val_size == 80 and run.val_size >= 2
    assert [e["epoch"] for e in run.epochs] == list(range(1, len(run.epochs) + 1))
    best = max(e["map"] for e in run.epochs)
    assert best > outcome.report.baseline["map"]
    deployed = labeled_store.models.deployed(PROJECT)
    assert deployed.name == outcome.model_version == serving_model(labeled_store, settings, PROJECT).version
    assert (settings.models_dir / deployed.name / "config.json").exists()
    assert deployed.metrics["val"]["map"] == pytest.approx(best)
    calibration = deployed.metrics["calibration"]  # the version's served thresholds, from its validation split
    assert set(calibration) >= {"thresholds", "abstained", "val_time_saved"}
    assert not set(calibration["thresholds"]) & set(calibration["abstained"])
    assert serving_model(labeled_store, settings, PROJECT).calibration.thresholds == calibration["thresholds"]
    report = settings.reports_dir / f"project-{PROJECT}" / f"run-{outcome.run_id}"
    assert json.loads(report.with_suffix(".json").read_text())["status"] == "succeeded"
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert not (settings.models_dir / ".staging" / f"run-{outcome.run_id}").exists()


@pytest.mark.slow  # real fine-tuning
def test_a_round_that_cannot_beat_the_deployed_model_is_rejected(settings, labeled_store):
    strict = with_settings(settings, promotion_margin=1.0)  # no mAP can beat the baseline by 1.0
    outcome = Worker(strict, labeled_store).run_once(project_id=PROJECT)
    assert outcome.status == "rejected"
    assert labeled_store.models.deployed(PROJECT) is None
    assert serving_model(labeled_store, strict, PROJECT).source == settings.model
    assert labeled_store.models.get(outcome.model_version).status == "rejected"


@pytest.mark.slow  # real fine-tuning
def test_a_crash_mid_round_leaves_everything_consistent_and_a_later_round_succeeds(settings, labeled_store):
    worker = Worker(settings, labeled_store)

    def crash(epoch):
        if epoch.epoch == 2:
            raise RuntimeError("injected fault after epoch 2")

    run_id = _queued_round(labeled_store, worker)
    outcome = run_round(settings, labeled_store, run_id, worker.owner, after_epoch=crash)
    run = labeled_store.runs.get(run_id)
    assert outcome.status == run.status == "failed"
    assert "injected fault" in run.error
    assert labeled_store.models.deployed(PROJECT) is None and labeled_store.models.versions(PROJECT) == []
    assert not any((settings.models_dir / ".staging").glob("*"))

    labeled_store.runs.request(PROJECT, "retry")
    later = worker.run_once(project_id=PROJECT)
    assert later.status == "succeeded"
    assert labeled_store.models.deployed(PROJECT).name == later.model_version

    # and rollback: back to the starting model is not a version; back to this one works, unknown ones don't
    with pytest.raises(ValueError, match="no model version"):
        rollback(labeled_store, settings, PROJECT, "groundloop-p7-r999")
    rollback(labeled_store, settings, PROJECT, later.model_version)
    assert labeled_store.models.deployed(PROJECT).name == later.model_version


def test_k_new_annotations_schedule_exactly_one_round(settings, shapes, ls_request):
    store = Store.from_settings(settings)
    worker = Worker(with_settings(settings, train_min_new_annotations=5), store)
    for index in range(4):
        store.ingest(annotation_webhook(ls_request, index, shapes[index]))
    assert worker.schedule_due_rounds() == []
    store.ingest(annotation_webhook(ls_request, 4, shapes[4]))
    first = worker.schedule_due_rounds()
    assert len(first) == 1
    assert worker.schedule_due_rounds() in ([], first)  # still queued: the same round, not another
    assert [r.status for r in store.runs.of_project(PROJECT)] == ["queued"]


def test_two_workers_never_train_one_project_at_once(settings, labeled_store):
    store = labeled_store
    store.runs.request(PROJECT, "test")
    workers = [Worker(settings, Store.from_settings(settings), owner=f"w{i}") for i in range(2)]
    claims, barrier = [], threading.Barrier(2)

    def claim(worker):
        barrier.wait()
        claims.append(worker.store.runs.claim(worker.owner, project_id=PROJECT))

    threads = [threading.Thread(target=claim, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c is not None for c in claims) == 1
    store.runs.request(PROJECT, "again")  # queued while one runs: still not claimable
    assert workers[0].store.runs.claim("w2", project_id=PROJECT) is None
