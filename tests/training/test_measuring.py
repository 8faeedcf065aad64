"""The starting model is measured on a project's first labeled images (no training): its tuned prompt and
thresholds deploy as a version of the same weights; before that, ``serve_unmeasured=false`` serves no box."""

from __future__ import annotations

from active_learning.labelstudio.config import parse_label_config
from active_learning.reports.status import project_status, render_status
from active_learning.serving.jobs import project_job
from active_learning.serving.pool import ModelPool
from active_learning.serving.predict import predict_images
from active_learning.store import Store
from active_learning.training.rounds import MEASURE
from active_learning.training.worker import Worker
from tests.support.training import LABEL_CONFIG, PROJECT, annotation_webhook, with_settings


def test_the_starting_model_is_measured_once_after_the_first_annotations_and_serves_tuned(
        settings, shapes, ls_request, detector):
    settings = with_settings(settings, train_min_new_annotations=50, measure_min_annotations=5,
                             serve_unmeasured=False, text_threshold=0.0)
    store = Store.from_settings(settings)
    worker = Worker(settings, store)
    pool = ModelPool(settings, store, starting=detector)
    schema = parse_label_config(LABEL_CONFIG)

    def served_labels() -> set[str]:
        model = pool.model_for(PROJECT)
        job = project_job(settings, store, schema, PROJECT, calibration=model.calibration)
        [predicted] = predict_images(model.detector, [shapes[40].image], job)
        return {r["value"]["rectanglelabels"][0] for r in predicted.result}

    for index in range(4):
        assert store.ingest(annotation_webhook(ls_request, index, shapes[index])).handled
    assert worker.schedule_due_rounds() == []
    assert served_labels() == set(), "unmeasured and serve_unmeasured=false: no box"
    serving_anyway = with_settings(settings, serve_unmeasured=True)  # the default
    assert ModelPool(serving_anyway, store, starting=detector).model_for(PROJECT).calibration is None

    assert store.ingest(annotation_webhook(ls_request, 4, shapes[4])).handled
    outcome = worker.run_once(project_id=PROJECT)
    run = store.runs.get(outcome.run_id)
    assert (outcome.status, run.trigger, run.train_size, run.val_size) == ("succeeded", MEASURE, 0, 5)

    version = store.models.deployed(PROJECT)
    assert version.name == outcome.model_version and version.path == settings.model  # the same weights
    assert version.metrics["measured_only"] and version.metrics["weights_digest"] == detector.version_digest
    calibration = version.metrics["calibration"]
    assert set(calibration["thresholds"]) | set(calibration["abstained"]) <= {c.name for c in schema.classes}

    model = pool.model_for(PROJECT)
    assert model.version == version.name and model.detector is detector, "no second copy of the weights"
    assert model.calibration.thresholds == calibration["thresholds"]
    assert served_labels() <= set(calibration["thresholds"]), "a measured version serves what it calibrated"
    assert pool.model_for(None).version != version.name  # project-less requests still get the starting model

    for index in range(5, 9):  # more annotations: no second measuring round, and no training before 50
        assert store.ingest(annotation_webhook(ls_request, index, shapes[index])).handled
    assert worker.schedule_due_rounds() == []

    text = render_status({"projects": [project_status(store, PROJECT)]})
    assert f"{version.name}" in text and "measured, not trained" in text


def test_no_measuring_round_when_disabled_or_a_version_serves(settings, shapes, ls_request):
    store = Store.from_settings(settings)
    for index in range(6):
        assert store.ingest(annotation_webhook(ls_request, index, shapes[index])).handled
    off = with_settings(settings, train_min_new_annotations=50, measure_min_annotations=0)
    assert Worker(off, store).schedule_due_rounds() == []
    on = with_settings(off, measure_min_annotations=5)
    store.models.add("groundloop-p7-r99", settings.model, project_id=PROJECT, status="deployed")
    assert Worker(on, store).schedule_due_rounds() == []
