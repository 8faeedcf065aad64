"""Labels language cannot name: two labels sharing a phrase through ``predicted_values`` are detected once as the
phrase and told apart by the crop classifier, whose heads train on the annotators' boxes, travel with the model
version and are served through the one prediction path.

The data: squares on noise, red ("red team") or blue ("blue team"), both ``predicted_values="square"``; the
classifier's backbone is the tiny random DINOv2 (``small_encoder_dir``), loaded from its directory as a hub id
would be."""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import pytest
import supervision as sv

from active_learning.labelstudio.config import LabelConfigError, LabelGroup, parse_label_config
from active_learning.reports.status import project_status, render_status
from active_learning.serving.jobs import make_job, project_job
from active_learning.serving.labeling import assign_labels
from active_learning.serving.pool import ModelPool
from active_learning.serving.predict import predict_images
from active_learning.store import Store
from active_learning.training.dataset import build_dataset, validation_ids
from active_learning.training.registry import rollback
from active_learning.training.rounds import CLASSIFY, MEASURE
from active_learning.training.worker import Worker
from active_learning.images import ImageCache
from model.synthetic import TEAM_LABELS, TEAM_PHRASE, make_teams_dataset
from tests.support.media import media_server
from tests.support.training import LABEL_CONFIG, PROJECT, TOKEN, annotation_webhook, with_settings

TEAMS_CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    '<Label value="red team" predicted_values="square"/><Label value="blue team" predicted_values="square"/>'
    '<Label value="circle"/></RectangleLabels></View>'
)
RED, BLUE = (label.name for label in TEAM_LABELS)


def _config(*labels: str) -> str:
    return ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
            + "".join(labels) + "</RectangleLabels></View>")


# --- the config convention --------------------------------------------------------------------------------------

def test_labels_sharing_a_phrase_form_a_group_detected_once_as_the_phrase():
    schema = parse_label_config(_config('<Label value="Alice" predicted_values="human face"/>',
                                        '<Label value="Bob" predicted_values="Human Face,person"/>',
                                        '<Label value="car" predicted_values="automobile"/>',
                                        '<Label value="Carol" predicted_values="person"/>'))
    assert schema.label_groups == (LabelGroup("human face", ("Alice", "Bob", "Carol"), ("person",)),)
    assert [(c.name, c.aliases) for c in schema.classes] == [("human face", ("person",)), ("car", ("automobile",))]
    assert [schema.detection_class(label) for label in ("Alice", "Carol", "car")] == ["human face", "human face",
                                                                                     "car"]
    assert schema.group("human face").labels == ("Alice", "Bob", "Carol") and schema.group("car") is None


def test_a_config_without_shared_phrases_is_served_as_before(settings):
    schema = parse_label_config(LABEL_CONFIG)
    assert schema.label_groups == () and schema.classes == schema.labels
    job = make_job(settings, schema, PROJECT)
    assert (job.classifier, job.classifier_backbone, dict(job.fallback_labels)) == (None, None, {})
    other_backbone = make_job(with_settings(settings, classifier_backbone="elsewhere/dinov2"), schema, PROJECT)
    assert other_backbone.params_key == job.params_key, "the backbone is no part of a box project's cache key"


def test_a_shared_phrase_that_is_also_a_label_is_a_config_error():
    with pytest.raises(LabelConfigError, match='"face" is shared by the labels Alice, Bob .* also the label "face"'):
        parse_label_config(_config('<Label value="Alice" predicted_values="face"/>',
                                   '<Label value="Bob" predicted_values="face"/>', '<Label value="face"/>'))


# --- the project: team squares served as Label Studio media -------------------------------------------------------

@pytest.fixture(scope="module")
def teams():
    return make_teams_dataset(40, seed=3)


@pytest.fixture(scope="module")
def teams_url(teams) -> Iterator[str]:
    pngs = {}
    for i, sample in enumerate(teams):
        buffer = io.BytesIO()
        sample.image.save(buffer, format="PNG")
        pngs[f"/data/upload/{PROJECT}/{i}.png"] = buffer.getvalue()
    with media_server(pngs.get, TOKEN) as url:
        yield url


@pytest.fixture
def teams_settings(settings, teams_url, small_encoder_dir):
    return with_settings(settings, label_studio_url=teams_url, classifier_backbone=str(small_encoder_dir),
                         train_min_new_annotations=1000, measure_min_annotations=5, classifier_min_new_annotations=4,
                         text_threshold=0.0, box_threshold=0.05)


def _annotate(store: Store, ls_request, teams, indices) -> None:
    for index in indices:
        assert store.ingest(annotation_webhook(ls_request, index, teams[index], labels=TEAM_LABELS,
                                               label_config=TEAMS_CONFIG)).handled


def _served_accuracy(settings, store: Store, pool: ModelPool, teams, task_ids) -> float:
    """Of the human boxes of ``task_ids``, the share the served pipeline's labeling step names right."""
    model = pool.model_for(PROJECT)
    job = project_job(settings, store, store.projects.schema(PROJECT), PROJECT, calibration=model.calibration,
                      classifier=model.classifier)
    right = total = 0
    for task_id in task_ids:
        truth = teams[task_id - 1].targets
        found = sv.Detections(xyxy=truth.xyxy.copy(), confidence=np.full(len(truth), 0.9),
                              class_id=np.zeros(len(truth), dtype=int), data={"class_name": np.array(
                                  [TEAM_PHRASE] * len(truth))})
        assign_labels(teams[task_id - 1].image, found, job, "cpu")
        right += sum(str(name) == TEAM_LABELS[c].name for name, c in zip(found.data["class_name"], truth.class_id))
        total += len(truth)
    return right / total


def test_before_a_head_the_most_used_label_serves_with_a_low_score_and_the_task_comes_first(
        teams_settings, teams, ls_request, detector):
    store = Store.from_settings(teams_settings)
    blue_only = [i for i, t in enumerate(teams) if set(t.targets.class_id.tolist()) == {1}][:3]
    _annotate(store, ls_request, teams, blue_only)
    schema = store.projects.schema(PROJECT)
    job = project_job(teams_settings, store, schema, PROJECT)
    assert job.fallback_labels == {TEAM_PHRASE: BLUE} and job.classifier is None
    [predicted] = predict_images(detector, [teams[0].image], job)
    boxes = [r for r in predicted.result if r["value"]["rectanglelabels"][0] != "circle"]
    assert boxes, "the small model at a 0.05 threshold finds some squares"
    assert {r["value"]["rectanglelabels"][0] for r in boxes} == {BLUE}
    detected = predicted.detections
    for region in boxes:
        i = int(region["id"][1:])
        assert region["score"] == pytest.approx(float(detected.confidence[i]) / 2)  # two labels: 1/2 each
    assert predicted.score == 0.0, "an unnamed label makes the task the most uncertain"


@pytest.mark.slow
def test_rounds_train_heads_that_travel_with_their_version(teams_settings, teams, ls_request, detector):
    settings = teams_settings
    store = Store.from_settings(settings)
    worker = Worker(settings, store)
    pool = ModelPool(settings, store, starting=detector)

    # the measuring round (the first deployed version) trains the first heads
    _annotate(store, ls_request, teams, range(24))
    measured = worker.run_once(project_id=PROJECT)
    assert (measured.status, store.runs.get(measured.run_id).trigger) == ("succeeded", MEASURE)
    version = store.models.deployed(PROJECT)
    head = version.metrics["classifier"]["groups"][TEAM_PHRASE]
    assert head["labels"] == [RED, BLUE] and head["trained_in"] == version.name and head["val_crops"] > 0
    assert head["val_accuracy"] >= 0.9

    validation = sorted(validation_ids(range(1, 25), settings.val_fraction, settings.val_min))
    assert _served_accuracy(settings, store, pool, teams, validation) >= 0.9
    model = pool.model_for(PROJECT)
    job = project_job(settings, store, store.projects.schema(PROJECT), PROJECT, calibration=model.calibration,
                      classifier=model.classifier)
    [predicted] = predict_images(model.detector, [teams[30].image], job)
    labels = {r["value"]["rectanglelabels"][0] for r in predicted.result}
    assert labels <= {RED, BLUE, "circle"}
    text = render_status({"projects": [project_status(store, PROJECT)]})
    assert f"square -> red team, blue team: head trained in {version.name} on {head['crops']} crops" in text

    # the detector trains on the group as its phrase
    dataset = build_dataset(store, ImageCache(settings), PROJECT, settings.val_fraction, settings.val_min)
    assert [c.name for c in dataset.classes] == [TEAM_PHRASE, "circle"]
    assert set(np.concatenate([e.targets.class_id for e in dataset.train]).tolist()) == {0}

    # more labels: a classifier round alone; a head no better than the served one is not deployed
    _annotate(store, ls_request, teams, range(24, 30))
    assert worker.schedule_due_rounds() != []
    retrained = worker.run_once(project_id=PROJECT)
    assert store.runs.get(retrained.run_id).trigger == CLASSIFY
    if retrained.status == "succeeded":
        new = store.models.deployed(PROJECT)
        assert new.path == version.path and new.metrics["weights_digest"] == version.metrics["weights_digest"]
        assert new.metrics["classifier"]["groups"][TEAM_PHRASE]["val_accuracy"] > head["val_accuracy"]
    else:
        assert "no head beat" in store.runs.get(retrained.run_id).error
        assert store.models.deployed(PROJECT).name == version.name


@pytest.mark.slow
def test_a_classifier_round_deploys_better_heads_and_rollback_brings_the_old_ones_back(
        teams_settings, teams, ls_request, detector):
    settings = teams_settings
    store = Store.from_settings(settings)
    worker = Worker(settings, store)
    pool = ModelPool(settings, store, starting=detector)
    red_only = [i for i, t in enumerate(teams) if set(t.targets.class_id.tolist()) == {0}]
    _annotate(store, ls_request, teams, red_only[:6])  # every box red: no head can beat "the most used label"
    measured = worker.run_once(project_id=PROJECT)
    first = store.models.deployed(PROJECT)
    assert measured.status == "succeeded" and pool.model_for(PROJECT).classifier is None
    assert not project_status(store, PROJECT)["label_groups"][0]["trained"]

    mixed = [i for i in range(len(teams)) if i not in red_only][:14]
    _annotate(store, ls_request, teams, mixed)
    outcome = worker.run_once(project_id=PROJECT)
    assert (outcome.status, store.runs.get(outcome.run_id).trigger) == ("succeeded", CLASSIFY)
    second = store.models.deployed(PROJECT)
    assert second.parent == first.name and second.metrics["classifier_only"]
    assert pool.model_for(PROJECT).classifier is not None
    labeled = [t.task_id for t in store.tasks.labeled(PROJECT)]
    validation = sorted(validation_ids(labeled, settings.val_fraction, settings.val_min))
    with_heads = _served_accuracy(settings, store, pool, teams, validation)
    assert with_heads >= 0.9

    rollback(store, settings, PROJECT, first.name)
    assert pool.model_for(PROJECT).version == first.name and pool.model_for(PROJECT).classifier is None
    assert _served_accuracy(settings, store, pool, teams, validation) < with_heads
    rollback(store, settings, PROJECT, second.name)
    assert _served_accuracy(settings, store, pool, teams, validation) == with_heads
