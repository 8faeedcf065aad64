import numpy as np
import pytest

from model import DetectionSettings
from model.postprocess import select_detections

NAMES = ["cat", "dog"]


def select(xyxy, confidence, class_id, passes=None, image_wh=(100, 100), **settings):
    count = len(confidence)
    return select_detections(
        np.array(xyxy, dtype=np.float32).reshape(-1, 4),
        np.array(confidence, dtype=np.float32),
        np.array(class_id),
        np.ones(count, dtype=bool) if passes is None else np.array(passes),
        NAMES,
        image_wh,
        DetectionSettings(**settings),
    )


def test_nms_is_per_class():
    box, shifted = [10, 10, 50, 50], [12, 12, 52, 52]  # IoU about 0.82
    different = select([box, shifted], [0.9, 0.8], [0, 1])
    same = select([box, shifted], [0.8, 0.9], [0, 0])
    assert sorted(different.class_id.tolist()) == [0, 1]
    assert len(same) == 1 and same.confidence[0] == pytest.approx(0.9)
    assert same.xyxy[0].tolist() == shifted


def test_box_threshold_is_strict_and_text_threshold_result_is_honoured():
    boxes = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]]
    kept = select(boxes, [0.5, 0.75, 0.9, 0.25], [0, 0, 0, 0], passes=[True, True, False, True], box_threshold=0.5)
    assert kept.confidence.tolist() == [0.75]


def test_max_detections_keeps_the_most_confident_in_order():
    boxes = [[i * 10, 0, i * 10 + 5, 5] for i in range(6)]
    kept = select(boxes, [0.5, 0.9, 0.4, 0.8, 0.7, 0.6], [0, 1, 0, 1, 0, 1], max_detections=3)
    assert kept.confidence.tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert kept.data["class_name"].tolist() == ["dog", "dog", "cat"]


def test_boxes_are_clipped_to_the_image():
    kept = select([[-5, -3, 120, 40]], [0.9], [1], image_wh=(100, 60))
    assert kept.xyxy.tolist() == [[0, 0, 100, 40]]


def test_nothing_kept_is_an_empty_detections_with_class_names():
    kept = select([[0, 0, 10, 10]], [0.1], [0])
    assert len(kept) == 0 and kept.data["class_name"].shape == (0,)
