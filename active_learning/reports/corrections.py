"""How much annotators had to change the boxes we pre-annotated: the honest measure of a model's usefulness.

For each annotation that started from a prediction we served, predicted and final boxes are paired one to
one (Hungarian assignment on IoU, preferring pairs with the same label; only pairs with IoU >= 0.5 count).
Each predicted box then is exactly one of:

- **kept**: paired, same label, IoU >= 0.9 (the annotator left it, or nudged it by a pixel or two);
- **moved**: paired, same label, 0.5 <= IoU < 0.9 (right object, box redrawn);
- **relabeled**: paired, different label;
- **deleted**: not paired;

and each final box not paired is **added**. Boxes are paired within their control (``from_name``) only. For a
brush or polygon control (predicted and final items all carrying a ``"mask"``), IoU is the masks' IoU, so a mask
redrawn inside the same bounding box is not "kept". Precision and recall at IoU 0.5 treat kept + moved as true
positives: precision = TP / predicted boxes, recall = TP / final boxes. Summaries add counts over
annotations (micro averages). Regions of the project's smart tools (prompts for the segmenter) are no boxes.

**Annotator effort.** Each action is charged a time (settings ``cost_*_seconds``; defaults from human studies):
verifying a correct box 1.6 s (Papadopoulos et al. 2016, "We don't need no bounding-boxes"), drawing a box
with its label 7 s (extreme clicking, Papadopoulos et al. 2017), adjusting a box 3.5 s, relabeling 2 s,
deleting 1.5 s. A kept box costs a verification, a moved box an adjustment (looking at it is part of fixing
it), a relabeled box a relabel, a deleted box a deletion and an added box a drawing:

    seconds_with_predictions = verify*kept + adjust*moved + relabel*relabeled + delete*deleted + draw*added
    seconds_from_scratch     = draw * true_objects            (true objects = the final boxes)
    time_saved               = 1 - seconds_with_predictions / seconds_from_scratch
    edits_per_object         = (moved + relabeled + deleted + added) / true_objects

``time_saved`` > 0: the pre-annotations saved that fraction of the time; 0: as slow as drawing everything
(nothing useful predicted); < 0: correcting them took longer than drawing from scratch. With no true objects
there is nothing to save a fraction of: ``time_saved`` and ``edits_per_object`` are None (when boxes were
predicted on such images, the loss is unbounded in relative terms; ``seconds_with_predictions`` still says what
deleting them cost), and nothing divides by zero. A relabeled box that was also redrawn is charged the relabel
alone, so the estimate errs towards the model.

**Video.** In a video project the items are tracks (``videorectangle`` regions), paired the same way on a track
IoU: the mean, over every frame where either track is shown (Label Studio's interpolation of its keyframes),
of the two boxes' IoU (0 where only one is shown). A kept track needed no change, a moved one was adjusted (its
keyframes moved, or its span cut or extended), a deleted one matched no object and an added one was drawn.

The prediction an annotation started from is ``annotation.prediction`` when Label Studio sent one, else the
newest prediction we served for its task with the project's model version, served before the annotation
was created. Skipped and deleted annotations are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from pycocotools import mask as coco_mask
from scipy.optimize import linear_sum_assignment

from active_learning.labelstudio.regions import boxes_from_result

if TYPE_CHECKING:
    from active_learning.labelstudio.video_regions import VideoTrack
    from active_learning.settings import Settings
    from active_learning.store import Store
    from active_learning.store.tables import Annotation

MATCH_IOU = 0.5
KEPT_IOU = 0.9


@dataclass
class BoxChanges:
    kept: int = 0
    moved: int = 0
    relabeled: int = 0
    deleted: int = 0
    added: int = 0
    predicted: int = 0
    final: int = 0

    @property
    def true_positives(self) -> int:
        return self.kept + self.moved

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.final if self.final else None

    @property
    def edits(self) -> int:
        """Boxes the annotator had to touch: moved, relabeled, deleted or added."""
        return self.moved + self.relabeled + self.deleted + self.added

    @property
    def unchanged(self) -> bool:
        return self.edits == 0

    def __iadd__(self, other: "BoxChanges") -> "BoxChanges":
        for f in fields(BoxChanges):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


@dataclass(frozen=True)
class ActionCosts:
    """Seconds per annotator action; ``Settings.action_costs()`` builds it (the defaults live in Settings)."""

    draw: float
    verify: float
    adjust: float
    relabel: float
    delete: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"the {f.name} cost must be a finite number of seconds >= 0, got {value!r}")

    @classmethod
    def from_settings(cls, settings: "Settings | None" = None) -> "ActionCosts":
        """``settings``' costs; without settings, the defaults."""
        if settings is None:
            from active_learning.settings import Settings

            settings = Settings()
        return settings.action_costs()


def estimate_effort(changes: BoxChanges, costs: ActionCosts) -> dict[str, Any]:
    """Annotator seconds with our pre-annotations and from scratch, time saved, edits per true object."""
    true_objects = changes.final
    with_predictions = (costs.verify * changes.kept + costs.adjust * changes.moved
                        + costs.relabel * changes.relabeled + costs.delete * changes.deleted
                        + costs.draw * changes.added)
    from_scratch = costs.draw * true_objects
    return {
        "true_objects": true_objects,
        "seconds_with_predictions": round(with_predictions, 3),
        "seconds_from_scratch": round(from_scratch, 3),
        "time_saved": 1 - with_predictions / from_scratch if from_scratch > 0 else None,
        "edits_per_object": changes.edits / true_objects if true_objects else None,
    }


@dataclass
class CorrectionSummary:
    """The changes to one model version's predictions, over all annotations that started from them."""

    model_version: str
    annotations: int = 0
    unchanged_annotations: int = 0
    """Annotations where every predicted box was kept and none added."""
    changes: BoxChanges = field(default_factory=BoxChanges)
    by_control: dict[str, BoxChanges] = field(default_factory=dict)
    """The same counts per ``<RectangleLabels>`` control (a box is compared only with boxes of its control)."""
    costs: ActionCosts | None = None
    """With costs, ``as_dict`` adds the annotator effort (``estimate_effort``) to the version's and each control's
    counts; without, the counts alone."""

    def as_dict(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "annotations": self.annotations,
                "unchanged_annotations": self.unchanged_annotations, **_counts(self.changes, self.costs),
                "controls": {name: _counts(changes, self.costs) for name, changes in sorted(self.by_control.items())}}


def _counts(c: BoxChanges, costs: ActionCosts | None = None) -> dict[str, Any]:
    counts = {**{f.name: getattr(c, f.name) for f in fields(BoxChanges)}, "precision": c.precision,
              "recall": c.recall}
    return {**counts, **estimate_effort(c, costs)} if costs else counts


def compare_boxes(predicted: Sequence[dict[str, Any]], final: Sequence[dict[str, Any]]) -> BoxChanges:
    """Classify the change from ``predicted`` to ``final`` boxes (``{"label", "box": [x1, y1, x2, y2]}``, and
    ``"mask"``, a COCO RLE, for masks): paired by mask IoU when every item on both sides has a mask of one size,
    else by box IoU."""
    if not predicted or not final:
        iou = np.zeros((len(predicted), len(final)))
    else:
        iou = _mask_iou(predicted, final) if _all_masks(predicted, final) else _box_iou(predicted, final)
    return _paired([p["label"] for p in predicted], [f["label"] for f in final], iou)


def compare_tracks(predicted: Sequence["VideoTrack"], final: Sequence["VideoTrack"]) -> BoxChanges:
    """``compare_boxes`` for the tracks of a video, on their track IoU (see the module docstring)."""
    iou = np.array([[_track_iou(p, f) for f in final] for p in predicted], dtype=float)
    return _paired([p.label for p in predicted], [f.label for f in final], iou.reshape(len(predicted), len(final)))


def _paired(predicted: list[str], final: list[str], iou: np.ndarray) -> BoxChanges:
    """The one-to-one pairing of predicted and final items by ``iou`` (labels given), classified."""
    changes = BoxChanges(predicted=len(predicted), final=len(final))
    if not predicted or not final:
        changes.deleted, changes.added = len(predicted), len(final)
        return changes
    same = np.array([[p == f for f in final] for p in predicted])
    # The same-label bonus (< any IoU difference that matters) breaks near-ties towards correct pairs.
    score = np.where(iou >= MATCH_IOU, iou + same.astype(float), 0.0)
    rows, cols = linear_sum_assignment(score, maximize=True)
    paired = 0
    for r, c in zip(rows, cols):
        if iou[r, c] < MATCH_IOU:
            continue
        paired += 1
        if not same[r, c]:
            changes.relabeled += 1
        elif iou[r, c] >= KEPT_IOU:
            changes.kept += 1
        else:
            changes.moved += 1
    changes.deleted = len(predicted) - paired
    changes.added = len(final) - paired
    return changes


def compare_by_control(predicted: Sequence[dict[str, Any]], final: Sequence[dict[str, Any]]) -> dict[str, BoxChanges]:
    """``compare_boxes`` within each control (``from_name``): a box never pairs with another control's box."""
    controls = sorted({str(b.get("from_name")) for b in (*predicted, *final)})
    return {control: compare_boxes([b for b in predicted if str(b.get("from_name")) == control],
                                   [b for b in final if str(b.get("from_name")) == control])
            for control in controls}


def correction_stats(store: "Store", project_id: int,
                     costs: ActionCosts | None = None) -> dict[str, CorrectionSummary]:
    """Per model version, how annotators changed its predictions in this project (in the order of the first
    annotation that started from each); with ``costs``, each summary also estimates the annotators' effort."""
    project = store.projects.get(project_id)
    schema = store.projects.schema(project_id)
    summaries: dict[str, CorrectionSummary] = {}
    for annotation in store.annotations.of_project(project_id):
        if annotation.was_cancelled:
            continue
        start = starting_prediction(store, annotation, project.model_version if project else None)
        if start is None:
            continue
        version, result = start
        try:
            by_control = _video_changes(result, annotation.result) if schema and schema.is_video else \
                _image_changes(store, annotation, result, schema)
        except ValueError:
            continue  # a prediction we cannot place in pixels says nothing about corrections
        summary = summaries.setdefault(version, CorrectionSummary(version, costs=costs))
        changes = BoxChanges()
        for control, counted in by_control.items():
            changes += counted
            summary.by_control.setdefault(control, BoxChanges())
            summary.by_control[control] += counted
        summary.annotations += 1
        summary.unchanged_annotations += changes.unchanged
        summary.changes += changes
    return summaries


def _image_changes(store: "Store", annotation: "Annotation", result: list, schema) -> dict[str, BoxChanges]:
    task = store.tasks.get(annotation.task_id)
    size = (task.width, task.height) if task and task.width and task.height else None
    predicted, _ = boxes_from_result(result, "prediction.result", size)
    final = schema.label_boxes(annotation.boxes) if schema else annotation.boxes  # smart tools' are prompts
    predicted = schema.label_boxes(predicted) if schema else predicted
    return compare_by_control(predicted, final)


def _video_changes(result: list, final_result: list) -> dict[str, BoxChanges]:
    """Track changes per control; coordinates stay in percent (a frame of 100 x 100: IoU does not change)."""
    from active_learning.labelstudio.video_regions import tracks_from_result

    predicted = tracks_from_result(result, 100, 100, "prediction.result")
    final = tracks_from_result(final_result, 100, 100, "annotation.result")
    controls = sorted({str(t.from_name) for t in (*predicted, *final)})
    return {control: compare_tracks([t for t in predicted if str(t.from_name) == control],
                                    [t for t in final if str(t.from_name) == control]) for control in controls}


def _track_iou(a: "VideoTrack", b: "VideoTrack") -> float:
    frames = sorted(set(a.frames()) | set(b.frames()))
    if not frames:
        return 0.0
    both = [(a.box_at(n), b.box_at(n)) for n in frames]
    pairs = [(p, q) for p, q in both if p is not None and q is not None]
    if not pairs:
        return 0.0
    first, second = (np.array(side, dtype=float).reshape(-1, 4) for side in zip(*pairs))
    overlap = np.clip(np.minimum(first[:, 2:], second[:, 2:]) - np.maximum(first[:, :2], second[:, :2]), 0, None)
    inter = overlap.prod(axis=1)
    union = (first[:, 2:] - first[:, :2]).prod(axis=1) + (second[:, 2:] - second[:, :2]).prod(axis=1) - inter
    return float(np.where(union > 0, inter / np.where(union > 0, union, 1), 0).sum() / len(frames))


def starting_prediction(store: "Store", annotation: "Annotation",
                        project_model_version: str | None) -> tuple[str, list[dict[str, Any]]] | None:
    """``(model_version, result)`` of the prediction the annotation started from, if known."""
    sent = annotation.prediction
    if sent and isinstance(sent.get("result"), list):
        return str(sent.get("model_version") or "unknown"), sent["result"]
    version = annotation.project_model_version or project_model_version
    if version is None:
        return None
    served = store.predictions.served(annotation.task_id, version, before=annotation.created_at)
    return (version, served[0].result) if served else None


def _box_iou(predicted: Sequence[dict[str, Any]], final: Sequence[dict[str, Any]]) -> np.ndarray:
    """IoU of every predicted box with every final one (pycocotools, as the mAP evaluation uses)."""
    def xywh(boxes: Sequence[dict[str, Any]]) -> np.ndarray:
        xyxy = np.array([b["box"] for b in boxes], dtype=np.float64).reshape(-1, 4)
        return np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])

    return np.asarray(coco_mask.iou(xywh(predicted), xywh(final), [0] * len(final)), dtype=float)


def _all_masks(predicted: Sequence[dict[str, Any]], final: Sequence[dict[str, Any]]) -> bool:
    sizes = {tuple(b["mask"]["size"]) if isinstance(b.get("mask"), dict) else None for b in (*predicted, *final)}
    return len(sizes) == 1 and None not in sizes


def _mask_iou(predicted: Sequence[dict[str, Any]], final: Sequence[dict[str, Any]]) -> np.ndarray:
    """IoU of every predicted mask with every final one (COCO RLEs of one image size)."""
    def rles(boxes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"size": list(b["mask"]["size"]), "counts": b["mask"]["counts"]} for b in boxes]

    iou = coco_mask.iou(rles(predicted), rles(final), [0] * len(final))
    return np.asarray(iou, dtype=float).reshape(len(predicted), len(final))
