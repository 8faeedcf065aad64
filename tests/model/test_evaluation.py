import numpy as np
import pytest
import supervision as sv

from model.evaluation import evaluate_detections

CLASSES = ["cat", "dog"]
SIZES = [(100, 100), (100, 100)]


def dets(boxes, class_ids, scores=None):
    return sv.Detections(
        xyxy=np.array(boxes, dtype=float).reshape(-1, 4),
        class_id=np.array(class_ids, dtype=int),
        confidence=None if scores is None else np.array(scores, dtype=float),
    )


TRUTH = [dets([[10, 10, 50, 50]], [0]), dets([[20, 20, 80, 90]], [1])]


def test_perfect_predictions_score_one():
    predictions = [dets([[10, 10, 50, 50]], [0], [0.9]), dets([[20, 20, 80, 90]], [1], [0.8])]
    metrics = evaluate_detections(TRUTH, predictions, SIZES, CLASSES)
    assert metrics.map == pytest.approx(1.0) and metrics.map50 == pytest.approx(1.0)
    assert metrics.per_class_ap == pytest.approx({"cat": 1.0, "dog": 1.0})


def test_wrong_class_and_loose_box_lower_the_score():
    predictions = [dets([[10, 10, 50, 50]], [1], [0.9]), dets([[25, 25, 80, 90]], [1], [0.8])]
    metrics = evaluate_detections(TRUTH, predictions, SIZES, CLASSES)
    assert metrics.per_class_ap["cat"] == 0.0
    assert 0.0 < metrics.per_class_ap["dog"] < 1.0
    # cat missed (AP 0); dog found at IoU .5 but ranked below the false dog on image 0 (AP .5)
    assert metrics.map50 == pytest.approx(0.25)


def test_false_positive_on_a_negative_image_counts():
    truth = [TRUTH[0], dets([], [])]
    clean = [dets([[10, 10, 50, 50]], [0], [0.5]), dets([], [], [])]
    noisy = [clean[0], dets([[0, 0, 30, 30]], [0], [0.9])]
    assert evaluate_detections(truth, clean, SIZES, CLASSES).map == pytest.approx(1.0)
    assert evaluate_detections(truth, noisy, SIZES, CLASSES).map < 0.99


def test_no_predictions_and_no_truth():
    empty = [dets([], [], []), dets([], [], [])]
    assert evaluate_detections(TRUTH, empty, SIZES, CLASSES).map == 0.0
    assert evaluate_detections(empty, empty, SIZES, CLASSES).map == 0.0
