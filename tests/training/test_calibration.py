"""Served thresholds calibrated per class on validation, and abstention: the threshold that costs annotators the
least time is the one served, a class that only costs time is not served, a threshold in the label config still
wins for its control, and the thresholds belong to the model version (deploy and rollback carry them)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import supervision as sv

from active_learning.images import ImageFetcher
from active_learning.labelstudio.config import parse_label_config
from active_learning.labelstudio.regions import regions_from_detections
from active_learning.reports.corrections import ActionCosts
from active_learning.reports.status import project_status, render_status
from active_learning.serving.calibration import Calibration, ImageBoxes, best_nms, calibrate, calibrate_detector, \
    class_cost
from active_learning.serving.jobs import make_job, project_job, recalibrated
from active_learning.serving.pool import ModelPool
from active_learning.serving.predict import predict_images
from active_learning.settings import Settings
from active_learning.store import Store
from active_learning.training.registry import rollback
from backend.predictor import Predictor
from model.config import DetectionSettings
from model.synthetic import SHAPE_CLASSES
from model.training import TrainingExample
from tests.support.backend import deploy_copy
from tests.support.training import LABEL_CONFIG, PROJECT

COSTS = ActionCosts(draw=7.0, verify=1.6, adjust=3.5, relabel=2.0, delete=1.5)
FLOOR = 0.01


def box(label, x1, y1, x2, y2, score=None):
    found = {"label": label, "box": [x1, y1, x2, y2]}
    return found if score is None else {**found, "score": score}


# Two images. cat: two true cats, one found exactly (0.9, kept), one roughly (0.4, moved), false boxes at 0.6,
# 0.2 and 0.15. dog: one true dog found exactly (0.5) and a dog box on the first cat (0.95), a false dog for
# the dog's cost, and nothing at all for the cat's: classes are costed apart.
IMAGES = [
    ImageBoxes(predicted=[box("cat", 0, 0, 10, 10, 0.9), box("cat", 50, 50, 60, 60, 0.6),
                          box("dog", 0, 0, 10, 10, 0.95), box("cat", 70, 0, 80, 10, 0.15)],
               true=[box("cat", 0, 0, 10, 10)]),
    ImageBoxes(predicted=[box("cat", 20, 20, 32, 30, 0.4), box("cat", 80, 80, 90, 90, 0.2),
                          box("dog", 40, 0, 50, 10, 0.5)],
               true=[box("cat", 20, 20, 30, 30), box("dog", 40, 0, 50, 10)]),
]


def test_calibration_serves_the_threshold_that_costs_annotators_the_least_time():
    calibration = calibrate(IMAGES, ["cat", "dog"], COSTS, floor=FLOOR)

    # cat, by hand: nothing 14 s; {0.9} 1.6+7 = 8.6; {0.9, 0.6} 10.1; down to 0.4: 1.6+1.5+3.5 = 6.6 (best);
    # with 0.2: 8.1; with 0.15: 9.6. The served value is the middle of the gap (0.2, 0.4).
    assert calibration.thresholds["cat"] == pytest.approx(0.3)
    # dog: nothing 7 s; {0.95} 1.5+7 = 8.5; both 1.5+1.6 = 3.1 (best): the gap is (floor, 0.5).
    assert calibration.thresholds["dog"] == pytest.approx((FLOOR + 0.5) / 2)
    assert calibration.abstained == ()

    for label in ("cat", "dog"):  # no threshold at all does better than the calibrated one
        chosen = class_cost(IMAGES, label, calibration.thresholds[label], COSTS)["seconds_with_predictions"]
        brute = min(class_cost(IMAGES, label, t, COSTS)["seconds_with_predictions"]
                    for t in np.linspace(0, 1, 1001))
        assert chosen == pytest.approx(brute)
    assert calibration.classes["cat"]["seconds_with_predictions"] == pytest.approx(6.6)
    assert calibration.classes["dog"]["seconds_with_predictions"] == pytest.approx(3.1)
    assert calibration.val_time_saved == pytest.approx(1 - (6.6 + 3.1) / (14 + 7))

    # the costs decide: when deleting a false box costs as much as drawing, the 0.6 box makes keeping 0.4 dearer
    # (1.6+7+3.5 = 12.1 > 8.6), so only the 0.9 box is worth serving
    dear_deletes = replace(COSTS, delete=7.0)
    assert calibrate(IMAGES, ["cat"], dear_deletes, floor=FLOOR).thresholds["cat"] == pytest.approx((0.6 + 0.9) / 2)


def test_on_random_boxes_no_threshold_is_cheaper_than_the_calibrated_one():
    rng = np.random.default_rng(0)

    def boxes(n, scored):
        found = []
        for _ in range(n):
            x, y = rng.uniform(0, 80, 2)
            w, h = rng.uniform(5, 20, 2)
            jitter = rng.normal(0, 1.5, 4) if scored else np.zeros(4)
            found.append(box(str(rng.choice(["cat", "dog"])), *(np.array([x, y, x + w, y + h]) + jitter).tolist(),
                             round(float(rng.uniform(0.01, 1)), 2) if scored else None))
        return found

    images = []
    for _ in range(12):
        true = boxes(int(rng.integers(0, 5)), scored=False)
        near = [{**b, "box": [v + rng.normal(0, 1.0) for v in b["box"]], "score": round(float(rng.uniform(0.2, 1)), 2)}
                for b in true if rng.random() < 0.7]
        images.append(ImageBoxes(predicted=near + boxes(int(rng.integers(0, 4)), scored=True), true=true))
    calibration = calibrate(images, ["cat", "dog"], COSTS, floor=FLOOR)
    for label, detail in calibration.classes.items():
        threshold = calibration.thresholds.get(label, 1.0)
        chosen = class_cost(images, label, threshold, COSTS)["seconds_with_predictions"]
        assert chosen == pytest.approx(detail["seconds_with_predictions"])
        assert chosen <= min(class_cost(images, label, t, COSTS)["seconds_with_predictions"]
                             for t in np.linspace(0, 1, 201)) + 1e-9


def test_a_class_whose_boxes_only_cost_time_is_abstained_and_one_never_seen_stays_uncalibrated():
    images = [ImageBoxes(predicted=[box("bird", 50, 50, 60, 60, 0.8), box("bird", 0, 0, 4, 4, 0.3),
                                    box("cat", 0, 0, 10, 10, 0.7)],
                         true=[box("bird", 20, 20, 30, 30), box("cat", 0, 0, 10, 10)])]
    calibration = calibrate(images, ["bird", "cat", "fish"], COSTS, floor=FLOOR)
    assert calibration.abstained == ("bird",)
    assert "bird" not in calibration.thresholds and calibration.classes["bird"]["threshold"] is None
    assert "cat" in calibration.thresholds
    assert "fish" not in calibration.thresholds and "fish" not in calibration.abstained  # no true fish: no evidence
    # the abstained bird is drawn from scratch in the total
    assert calibration.val_time_saved == pytest.approx(1 - (7 + 1.6) / (7 + 7))
    assert Calibration.from_metrics({"calibration": calibration.as_metrics()}) == calibration


TWO_CONTROLS = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="animals" toName="image"><Label value="cat"/><Label value="dog"/></RectangleLabels>'
    '<RectangleLabels name="strict" toName="image" model_score_threshold="0.5">'
    '<Label value="cat"/><Label value="bird"/></RectangleLabels></View>'
)


def test_a_threshold_in_the_label_config_wins_over_the_calibrated_one_for_its_control(tmp_path):
    settings = Settings(data_dir=tmp_path, box_threshold=0.3)
    schema = parse_label_config(TWO_CONTROLS)
    calibration = Calibration({"cat": 0.7}, ("dog", "bird"))
    job = make_job(settings, schema, 1, calibration=calibration)
    plain = make_job(settings, schema, 1)

    assert job.thresholds_for("animals") == {"cat": 0.7, "dog": None}
    assert job.thresholds_for("strict") == {"cat": 0.5, "bird": 0.5}  # the config's, abstention included
    assert plain.thresholds_for("animals") == {"cat": 0.3, "dog": 0.3}
    assert job.detection.box_threshold == 0.3  # one detect pass at the lowest threshold any control uses
    assert make_job(settings, schema, 1, calibration=Calibration({"cat": 0.1})).detection.box_threshold == 0.1
    assert job.params_key != plain.params_key  # the thresholds are in the cache key
    assert make_job(settings, schema, 1, calibration=Calibration({"cat": 0.71}, ("dog", "bird"))).params_key \
        != job.params_key
    assert make_job(settings, schema, 1, calibration=calibration).params_key == job.params_key
    assert recalibrated(settings, job, calibration) is job
    assert recalibrated(settings, job, None).params_key == plain.params_key

    detections = sv.Detections(
        xyxy=np.array([[0, 0, 10, 10], [10, 10, 20, 20], [20, 20, 30, 30], [30, 30, 40, 40]], dtype=float),
        confidence=np.array([0.6, 0.9, 0.95, 0.6]),
        data={"class_name": np.array(["cat", "cat", "dog", "bird"])})
    regions = regions_from_detections(detections, schema, 100, 100, threshold=job.threshold)
    served = sorted((r["from_name"], r["value"]["rectanglelabels"][0], r["score"]) for r in regions)
    assert served == [("animals", "cat", 0.9),  # 0.6 is below cat's calibrated 0.7; the dog is abstained
                      ("strict", "bird", 0.6), ("strict", "cat", 0.6), ("strict", "cat", 0.9)]  # the config's 0.5
    uncalibrated = regions_from_detections(detections, schema, 100, 100, threshold=plain.threshold)
    assert len(uncalibrated) == 6  # both cats and the dog on animals; cats and the bird on strict


def test_calibrating_a_detector_on_validation_examples(detector, shapes):
    examples = [TrainingExample(s.image, s.targets) for s in shapes[:4]]
    calibration = calibrate_detector(detector, examples, list(SHAPE_CLASSES),
                                     DetectionSettings(box_threshold=FLOOR, text_threshold=0.0, image_size=128), COSTS)
    names = {c.name for c in SHAPE_CLASSES}
    assert set(calibration.thresholds) | set(calibration.abstained) <= names
    assert not set(calibration.thresholds) & set(calibration.abstained)
    assert all(FLOOR <= t < 1 for t in calibration.thresholds.values())
    assert calibration.val_time_saved is None or calibration.val_time_saved <= 1 - 1.6 / 7 + 1e-9


V1, V2 = "groundloop-p7-r1", "groundloop-p7-r2"
CAL_V1 = Calibration({"red square": 0.6, "blue circle": 0.5})
CAL_V2 = Calibration({"red square": 0.02}, ("blue circle", "green triangle"), 0.4)


def test_the_thresholds_travel_with_the_version_through_deploy_and_rollback(settings, small_model_dir, shapes):
    settings = replace(settings, box_threshold=0.0, text_threshold=0.0, max_detections=20)
    store = Store.from_settings(settings)
    schema = parse_label_config(LABEL_CONFIG)
    pool = ModelPool(settings, store)
    starting = pool.model_for(PROJECT)
    assert starting.calibration is None  # the starting model serves the settings' threshold
    start_job = project_job(settings, store, schema, PROJECT, calibration=starting.calibration)
    assert start_job.class_thresholds == {} and start_job.abstained == frozenset()

    deploy_copy(settings, store, small_model_dir, PROJECT, V1, metrics={"calibration": CAL_V1.as_metrics()})
    deploy_copy(settings, store, small_model_dir, PROJECT, V2, metrics={"calibration": CAL_V2.as_metrics()},
                parent=V1)
    model = pool.model_for(PROJECT)
    assert (model.version, model.calibration) == (V2, CAL_V2)
    job = project_job(settings, store, schema, PROJECT, calibration=model.calibration)
    assert job.thresholds_for("label") == {"red square": 0.02, "blue circle": None, "green triangle": None}
    v2_key = job.params_key

    [predicted] = predict_images(model.detector, [shapes[0].image], job)
    labels = {r["value"]["rectanglelabels"][0] for r in predicted.result}
    assert labels <= {"red square"}, "abstained classes are not served"
    assert all(r["score"] > 0.02 for r in predicted.result)

    rollback(store, settings, PROJECT, V1)
    model = pool.model_for(PROJECT)
    assert (model.version, model.calibration) == (V1, CAL_V1)
    job = project_job(settings, store, schema, PROJECT, calibration=model.calibration)
    assert job.thresholds_for("label") == {"red square": 0.6, "blue circle": 0.5, "green triangle": 0.0}
    assert job.params_key not in (v2_key, start_job.params_key)

    rollback(store, settings, PROJECT, V2)  # and forward again
    assert pool.model_for(PROJECT).calibration == CAL_V2

    status = project_status(store, PROJECT)
    by_name = {v["name"]: v["calibration"] for v in status["model_versions"]}
    assert by_name[V2] == {"thresholds": {"red square": 0.02}, "abstained": ["blue circle", "green triangle"],
                           "val_time_saved": 0.4, "dropped": {}, "nms_iou": None}
    assert by_name[V1]["abstained"] == []
    text = render_status({"projects": [status]})
    assert f"{V2}: red square > 0.020, blue circle abstained, green triangle abstained; val time saved 40%" in text


def test_predict_serves_with_the_serving_versions_thresholds(settings, small_model_dir, detector):
    settings = replace(settings, box_threshold=0.0, text_threshold=0.0, max_detections=20)
    store = Store.from_settings(settings)
    predictor = Predictor(settings, ModelPool(settings, store, starting=detector), store, ImageFetcher(settings))
    body = {"tasks": [{"id": 1, "data": {"image": f"/data/upload/{PROJECT}/0.png"}}], "label_config": LABEL_CONFIG,
            "project": f"{PROJECT}.1700000000"}

    [before] = predictor.predict(body)["results"]
    deploy_copy(settings, store, small_model_dir, PROJECT, V2, metrics={"calibration": CAL_V2.as_metrics()})
    [after] = predictor.predict(body)["results"]

    assert after["model_version"] == V2 and before["model_version"] != V2
    assert {r["value"]["rectanglelabels"][0] for r in before["result"]} - {"red square"}, \
        "the starting model serves every class (same weights: the difference is the version's calibration)"
    assert {r["value"]["rectanglelabels"][0] for r in after["result"]} <= {"red square"}
    assert all(r["score"] > 0.02 for r in after["result"])


def test_the_nms_iou_that_saves_the_most_time_is_served_with_the_thresholds(tmp_path):
    # image 1: a duplicate of a found car overlaps it at IoU 0.6; image 2: two true cars overlap each other at 0.6.
    # NMS at 0.5 removes the duplicate but also one of the two cars; at 0.7 both cars stay and the duplicate costs
    # a deletion: 1.6 + 1.5 + 1.6 + 1.6 = 6.3 s against 1.6 + 1.6 + 7 = 10.2 s
    images = [
        ImageBoxes([box("car", 0, 0, 10, 10, 0.9), box("car", 0, 0, 10, 6, 0.8)], [box("car", 0, 0, 10, 10)]),
        ImageBoxes([box("car", 20, 20, 30, 30, 0.8), box("car", 20, 20, 30, 26, 0.75)],
                   [box("car", 20, 20, 30, 30), box("car", 20, 20, 30, 26)]),
    ]
    detection = DetectionSettings(box_threshold=FLOOR, nms_iou=0.5)
    calibration = best_nms(images, ["car"], COSTS, detection)
    assert calibration.nms_iou == 0.7
    assert calibration.classes["car"]["seconds_with_predictions"] == pytest.approx(6.3)
    assert calibration.val_time_saved == pytest.approx(1 - 6.3 / 21)
    # without overlapping cars nothing beats the settings' IoU: it stays
    assert best_nms(images[:1], ["car"], COSTS, detection).nms_iou == 0.5

    settings = Settings(data_dir=tmp_path)
    job = make_job(settings, parse_label_config(LABEL_CONFIG), PROJECT, calibration=calibration)
    assert job.detection.nms_iou == 0.7
    assert make_job(settings, parse_label_config(LABEL_CONFIG), PROJECT).detection.nms_iou == settings.nms_iou
    assert Calibration.from_metrics({"calibration": calibration.as_metrics()}).nms_iou == 0.7
