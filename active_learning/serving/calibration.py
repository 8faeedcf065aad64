"""Served box thresholds calibrated per class on the validation split, and abstention: what a version serves.

A training round (``training.rounds``) calibrates its candidate on the project's validation images and stores the
result with the version (``metrics["calibration"]``), so deploying or rolling back a version brings its
thresholds along; the starting model has none and is served with the settings' threshold.

**Per class.** For class c and a threshold t, the validation images' predicted boxes of c with a score above t are
compared with the human boxes of c alone (``reports.corrections.compare_boxes``; other classes' boxes are left
out of c's cost) and the comparison is charged the annotator's time (``estimate_effort`` with the settings'
action costs). The thresholds tried are the floor the detections were made at (the evaluation threshold), every
distinct score of c's boxes and a few grid points: together they give every set of boxes a threshold can keep.
The cheapest wins; on a tie the one keeping the fewest boxes, and the value served is the middle of the score gap
below the lowest box it keeps (any value in that gap keeps the same boxes on the validation images; the middle
is the farthest from both).

**Abstention.** Keeping no box costs exactly drawing every object of c from scratch. A class for which no
threshold is cheaper than that is *abstained*: it serves no boxes (it stays in the detector's prompt, since
the prompt changes the other classes' scores) until a later version earns it. A class with no human box on the
validation images has nothing to be measured against: it is left uncalibrated and served as before.

**NMS.** The boxes are found once without suppression; per-class NMS at each IoU of ``NMS_IOUS`` (and the
settings' own) is applied to them as serving would, each result is calibrated, and the IoU whose calibration saves
the most time is served with it (``best_nms``).

``calibrate`` is pure (scored boxes in, thresholds out); ``calibrate_detector`` runs a detector on validation
examples first. Serving reads a version's calibration back with ``Calibration.from_metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from active_learning.reports.corrections import ActionCosts, BoxChanges, compare_boxes, estimate_effort

if TYPE_CHECKING:
    import supervision as sv

    from model.config import DetectionSettings
    from model.detector import Detector
    from model.prompts import ClassSpec
    from model.training import TrainingExample

GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Thresholds tried besides the boxes' own scores."""
NMS_IOUS = (0.3, 0.5, 0.7)
"""NMS IoUs tried (with the settings' own), each calibrated in full; the one saving the most time is served."""


@dataclass(frozen=True)
class ImageBoxes:
    """One validation image: predicted boxes ``{"label", "box": [x1, y1, x2, y2], "score"}`` and true boxes
    ``{"label", "box"}``."""

    predicted: Sequence[Mapping[str, Any]]
    true: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Calibration:
    """A model version's served box thresholds per class, and the classes it does not serve."""

    thresholds: Mapping[str, float] = field(default_factory=dict)
    """Class name -> served box threshold (a box is served when its score is above it)."""
    abstained: tuple[str, ...] = ()
    """Classes no threshold made cheaper than drawing from scratch: none of their boxes is served."""
    val_time_saved: float | None = None
    """Estimated annotator time saved on the validation images, all classes with human boxes together (abstained
    ones drawn from scratch); None without any human box."""
    classes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per class: threshold (None if abstained), true objects, seconds with the served boxes and from scratch,
    time saved; ``phrases`` (name or alias -> time saved searched alone) when prompt choice measured them."""
    dropped: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Class -> its name or aliases left out of the served prompt (``prompt_choice``)."""
    nms_iou: float | None = None
    """The NMS IoU served with these thresholds (``best_nms``); None: the settings'."""
    withheld: bool = False
    """Nothing measured yet and ``serve_unmeasured`` is off: no class is served (never stored with a version)."""

    def as_metrics(self) -> dict[str, Any]:
        return {"thresholds": dict(self.thresholds), "abstained": list(self.abstained),
                "val_time_saved": self.val_time_saved, "classes": {c: dict(v) for c, v in self.classes.items()},
                "dropped": {c: list(p) for c, p in self.dropped.items()}, "nms_iou": self.nms_iou}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any] | None) -> "Calibration | None":
        """The calibration recorded in a version's metrics, or None (the version has none, or it is unreadable)."""
        raw = (metrics or {}).get("calibration")
        if not isinstance(raw, dict):
            return None
        try:
            thresholds = {str(name): float(value) for name, value in (raw.get("thresholds") or {}).items()}
            abstained = tuple(str(name) for name in raw.get("abstained") or ())
            dropped = {str(name): tuple(str(p) for p in phrases) for name, phrases in (raw.get("dropped") or {}).items()}
        except (TypeError, ValueError, AttributeError):
            return None
        saved, nms_iou = raw.get("val_time_saved"), raw.get("nms_iou")
        return cls(thresholds, abstained, float(saved) if isinstance(saved, (int, float)) else None,
                   raw.get("classes") if isinstance(raw.get("classes"), dict) else {}, dropped,
                   float(nms_iou) if isinstance(nms_iou, (int, float)) and 0 < nms_iou <= 1 else None)


def class_cost(images: Sequence[ImageBoxes], label: str, threshold: float, costs: ActionCosts) -> dict[str, Any]:
    """``estimate_effort`` of serving ``label``'s boxes scoring above ``threshold``, against ``label``'s true
    boxes alone (the plain definition; ``calibrate`` computes the same from a table per image)."""
    changes = BoxChanges()
    for image in images:
        predicted = [b for b in _by_score(image.predicted, label) if b["score"] > threshold]
        changes += compare_boxes(predicted, [b for b in image.true if b["label"] == label])
    return estimate_effort(changes, costs)


_COUNTS = [f.name for f in fields(BoxChanges)]


def _by_score(boxes: Sequence[Mapping[str, Any]], label: str) -> list[Mapping[str, Any]]:
    return sorted((b for b in boxes if b["label"] == label), key=lambda b: -float(b["score"]))


def _count_table(image: ImageBoxes, label: str) -> tuple[np.ndarray, np.ndarray]:
    """The image's scores of ``label`` (highest first) and, for each n, the counts of serving its n best boxes:
    a threshold keeps the n boxes scoring above it, so trying every threshold needs no more comparisons."""
    predicted = _by_score(image.predicted, label)
    true = [b for b in image.true if b["label"] == label]
    table = [[getattr(changes, name) for name in _COUNTS]
             for changes in (compare_boxes(predicted[:n], true) for n in range(len(predicted) + 1))]
    return np.array([float(b["score"]) for b in predicted]), np.array(table, dtype=int)


def _cost_at(tables: list[tuple[np.ndarray, np.ndarray]], threshold: float, costs: ActionCosts) -> dict[str, Any]:
    total = np.zeros(len(_COUNTS), dtype=int)
    for scores, table in tables:
        total += table[int(np.count_nonzero(scores > threshold))]
    return estimate_effort(BoxChanges(**dict(zip(_COUNTS, total.tolist()))), costs)


def calibrate(images: Sequence[ImageBoxes], classes: Sequence[str], costs: ActionCosts,
              floor: float = 0.0, grid: Sequence[float] = GRID) -> Calibration:
    """Per class, the threshold that minimises the estimated annotator time on ``images`` (see the module
    docstring); ``floor``: the score the predictions were cut at (the lowest threshold that means anything)."""
    thresholds: dict[str, float] = {}
    abstained: list[str] = []
    details: dict[str, dict[str, Any]] = {}
    total_with = total_scratch = 0.0
    for label in classes:
        scores = sorted({float(b["score"]) for image in images for b in image.predicted if b["label"] == label})
        candidates = sorted({floor, *scores, *(g for g in grid if g > floor)})
        tables = [_count_table(image, label) for image in images]
        tried = [(t, _cost_at(tables, t, costs)) for t in candidates]
        scratch = tried[0][1]["seconds_from_scratch"]
        if tried[0][1]["true_objects"] == 0:
            continue  # nothing to measure against: left uncalibrated
        # the cheapest; on a tie the highest threshold (fewest boxes kept)
        best_threshold, best = min(tried, key=lambda pair: (pair[1]["seconds_with_predictions"], -pair[0]))
        total_scratch += scratch
        if best["seconds_with_predictions"] >= scratch:
            abstained.append(label)
            total_with += scratch
            details[label] = {"threshold": None, "true_objects": best["true_objects"],
                              "seconds_with_predictions": scratch, "seconds_from_scratch": scratch,
                              "time_saved": 0.0}
            continue
        lowest_kept = min(s for s in scores if s > best_threshold)
        below = max([floor, *(s for s in scores if s <= best_threshold)])
        threshold = round((below + lowest_kept) / 2, 6)
        if not below <= threshold < lowest_kept:  # rounding ate the gap
            threshold = below
        thresholds[label] = threshold
        total_with += best["seconds_with_predictions"]
        details[label] = {"threshold": threshold, "true_objects": best["true_objects"],
                          "seconds_with_predictions": best["seconds_with_predictions"],
                          "seconds_from_scratch": scratch, "time_saved": best["time_saved"]}
    saved = 1 - total_with / total_scratch if total_scratch > 0 else None
    return Calibration(thresholds, tuple(abstained), saved, details)


def best_nms(images: Sequence[ImageBoxes], classes: Sequence[str], costs: ActionCosts,
             detection: "DetectionSettings") -> Calibration:
    """``calibrate`` after per-class NMS at each IoU of ``NMS_IOUS`` and the settings' own (``images``: boxes
    found WITHOUT suppression, at ``detection.box_threshold``): the calibration saving the most time, with its
    IoU. On a tie the settings' IoU, then the lower one."""
    tried = []
    for iou in sorted({detection.nms_iou, *NMS_IOUS}, key=lambda v: (v != detection.nms_iou, v)):
        suppressed = [_suppressed(image, iou, detection.max_detections) for image in images]
        calibration = calibrate(suppressed, classes, costs, floor=detection.box_threshold)
        tried.append(replace(calibration, nms_iou=iou))
    return max(tried, key=lambda c: -1e9 if c.val_time_saved is None else c.val_time_saved)  # first of the best


def unsuppressed(detection: "DetectionSettings") -> "DetectionSettings":
    """``detection`` without NMS or cap, for ``best_nms`` to apply each IoU itself."""
    return replace(detection, nms_iou=1.0, max_detections=100_000)


def _suppressed(image: ImageBoxes, iou: float, max_detections: int) -> ImageBoxes:
    """Per-class NMS at ``iou``, then the ``max_detections`` most confident: what serving does after thresholds."""
    import supervision as sv

    if not image.predicted:
        return image
    labels = sorted({b["label"] for b in image.predicted})
    detections = sv.Detections(xyxy=np.array([b["box"] for b in image.predicted], dtype=np.float32),
                               confidence=np.array([b["score"] for b in image.predicted], dtype=np.float32),
                               class_id=np.array([labels.index(b["label"]) for b in image.predicted]),
                               data={"index": np.arange(len(image.predicted))})
    kept = detections.with_nms(threshold=iou, class_agnostic=False)
    order = np.argsort(-kept.confidence, kind="stable")[:max_detections]
    return ImageBoxes([image.predicted[int(i)] for i in kept.data["index"][order]], image.true)


def scored_boxes(detections: "sv.Detections", size: tuple[int, int]) -> list[dict[str, Any]]:
    """Detections -> ``{"label", "box", "score"}``, clipped to the image as served boxes are (empty ones go)."""
    width, height = size
    boxes = []
    scores = detections.confidence
    for i, (x1, y1, x2, y2) in enumerate(detections.xyxy.tolist()):
        x1, x2 = (min(max(v, 0.0), width) for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), height) for v in (y1, y2))
        if x2 > x1 and y2 > y1:
            boxes.append({"label": str(detections.data["class_name"][i]), "box": [x1, y1, x2, y2],
                          "score": float(scores[i]) if scores is not None else 1.0})
    return boxes


def calibrate_detector(detector: "Detector", examples: Sequence["TrainingExample"], classes: Sequence["ClassSpec"],
                       detection: "DetectionSettings", costs: ActionCosts) -> Calibration:
    """Detect on ``examples`` with ``detection`` (the served settings at a low box threshold: the
    calibration's floor), then ``best_nms``: thresholds and NMS IoU against their true boxes."""
    images = detect_validation(detector, examples, classes, unsuppressed(detection))
    return best_nms(images, [c.name for c in classes], costs, detection)


def detect_validation(detector: "Detector", examples: Sequence["TrainingExample"], classes: Sequence["ClassSpec"],
                      detection: "DetectionSettings", batch_size: int = 4) -> list[ImageBoxes]:
    """The scored boxes ``detector`` finds on each example for ``classes``, beside the example's true boxes."""
    names = [c.name for c in classes]
    images: list[ImageBoxes] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        found = detector.detect([e.image for e in chunk], list(classes), detection)
        for example, detections in zip(chunk, found):
            targets = example.targets
            true = [{"label": names[int(c)], "box": [float(v) for v in box]}
                    for box, c in zip(targets.xyxy.tolist(), targets.class_id.tolist())]
            images.append(ImageBoxes(scored_boxes(detections, example.image.size), true))
    return images
