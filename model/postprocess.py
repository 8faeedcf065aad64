"""From scored queries to the final boxes of one image: thresholds, clipping, per-class NMS, a cap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import supervision as sv


@dataclass(frozen=True)
class DetectionSettings:
    box_threshold: float = 0.35
    """A query becomes a box when its confidence is above this."""
    text_threshold: float = 0.25
    """...and every token of its winning phrase scores above this (see ``assignment.assign_classes``)."""
    nms_iou: float = 0.5
    """Boxes of the SAME class overlapping more than this are suppressed (the weaker one goes)."""
    max_detections: int = 100
    """At most this many boxes per image, the most confident."""
    image_size: int = 0
    """Shortest edge the model sees; 0 keeps the processor's default (800 for the released models)."""


def select_detections(
    xyxy: np.ndarray,
    confidence: np.ndarray,
    class_id: np.ndarray,
    passes_text_threshold: np.ndarray,
    class_names: Sequence[str],
    image_wh: tuple[int, int],
    settings: DetectionSettings,
) -> sv.Detections:
    """Keep the queries that pass both thresholds, clip them to the image, NMS per class, cap the count.

    Inputs are one row per candidate (queries of every prompt, concatenated); ``xyxy`` in pixels.
    """
    keep = (confidence > settings.box_threshold) & passes_text_threshold
    detections = sv.Detections(
        xyxy=sv.clip_boxes(xyxy[keep].astype(np.float32), image_wh),
        confidence=confidence[keep].astype(np.float32),
        class_id=class_id[keep].astype(int),
    )
    detections = detections.with_nms(threshold=settings.nms_iou, class_agnostic=False)
    most_confident_first = np.argsort(-detections.confidence, kind="stable")
    detections = detections[most_confident_first[: settings.max_detections]]
    detections.data["class_name"] = np.array(class_names, dtype=str)[detections.class_id]
    return detections
