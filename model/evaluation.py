"""COCO-style detection metrics with pycocotools, for choosing checkpoints and deciding promotions.

Ground truth and predictions are both ``supervision.Detections`` (pixel xyxy, ``class_id``); predictions also
carry ``confidence``. An image with no ground-truth box is a valid negative: false positives on it count.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import supervision as sv
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


@dataclass(frozen=True)
class DetectionMetrics:
    map: float
    """COCO mAP@[.5:.95] over the classes that have ground truth; the metric checkpoints are chosen by."""
    map50: float
    per_class_ap: dict[str, float] = field(default_factory=dict)
    """AP@[.5:.95] of each class with ground truth in the split."""

    def as_dict(self) -> dict:
        return {"map": self.map, "map50": self.map50, "per_class_ap": dict(self.per_class_ap)}


def _coco_boxes(detections: sv.Detections) -> list[list[float]]:
    xyxy = np.asarray(detections.xyxy, dtype=float).reshape(-1, 4)
    return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in xyxy.tolist()]


def evaluate_detections(
    ground_truth: Sequence[sv.Detections],
    predictions: Sequence[sv.Detections],
    image_sizes: Sequence[tuple[int, int]],
    class_names: Sequence[str],
) -> DetectionMetrics:
    """mAP@[.5:.95], mAP@.5 and per-class AP of ``predictions`` against ``ground_truth`` (same image order).

    ``image_sizes`` are (width, height). Classes without any ground-truth box are left out of the mean, as
    pycocotools does; if no class has ground truth the metrics are 0.
    """
    if not (len(ground_truth) == len(predictions) == len(image_sizes)):
        raise ValueError("ground_truth, predictions and image_sizes must have one entry per image")

    images, annotations, results = [], [], []
    for image_id, (truth, predicted, (width, height)) in enumerate(zip(ground_truth, predictions, image_sizes)):
        images.append({"id": image_id, "width": int(width), "height": int(height)})
        for box, class_id in zip(_coco_boxes(truth), np.asarray(truth.class_id).reshape(-1).tolist()):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(class_id),
                "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
            })
        scores = np.asarray(predicted.confidence if predicted.confidence is not None else [], dtype=float)
        for box, class_id, score in zip(_coco_boxes(predicted), np.asarray(predicted.class_id).reshape(-1).tolist(),
                                        scores.tolist()):
            results.append({"image_id": image_id, "category_id": int(class_id), "bbox": box, "score": score})

    if not annotations:
        return DetectionMetrics(map=0.0, map50=0.0)
    if not results:
        classes_with_truth = {a["category_id"] for a in annotations}
        return DetectionMetrics(0.0, 0.0, {class_names[c]: 0.0 for c in sorted(classes_with_truth)})

    truth_api = COCO()
    truth_api.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for i, name in enumerate(class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        truth_api.createIndex()
        evaluator = COCOeval(truth_api, truth_api.loadRes(results), iouType="bbox")
        evaluator.params.maxDets = [1, 10, max(100, max(len(p) for p in predictions))]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    # precision: [iou thresholds, recall points, classes, area ranges, max dets]; -1 marks "no ground truth"
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for index, class_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, index]
        values = values[values > -1]
        if values.size:
            per_class[class_names[class_id]] = float(values.mean())
    return DetectionMetrics(map=max(float(evaluator.stats[0]), 0.0), map50=max(float(evaluator.stats[1]), 0.0),
                            per_class_ap=per_class)
