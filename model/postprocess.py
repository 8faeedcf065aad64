"""From scored queries to the final boxes of one image: thresholds, clipping, per-class NMS, a cap."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import supervision as sv

from model.config import DetectionSettings


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
