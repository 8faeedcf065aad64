"""Masks for the boxes that mask controls serve: Grounded SAM's second step.

The segmenter (``Settings.segmenter``) is not fine-tuned and serves every model version alike: a process holds one
per source and device (``shared_models``), loaded the first time a job needs masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from active_learning.serving.jobs import Job
from active_learning.serving.shared_models import SharedModels
from model.sources import SEGMENTER

if TYPE_CHECKING:
    import supervision as sv
    import torch
    from PIL import Image

    from model.segmenter import Segmenter


def _load_segmenter(source: str, device: str) -> "Segmenter":
    from model.segmenter import Segmenter

    return Segmenter.load(source, device=device)


_SEGMENTERS: SharedModels["Segmenter"] = SharedModels(
    SEGMENTER, _load_segmenter, "no masks",
    "set --segmenter / GROUNDLOOP_SEGMENTER to a SAM-family hub id or save_pretrained directory")


def shared_segmenter(source: str, device: "torch.device | str") -> "Segmenter":
    """The process's segmenter for ``source`` on ``device``; ``ModelUnavailable`` when it cannot load."""
    return _SEGMENTERS.get(source, device)


def add_masks(segmenter: "Segmenter", image: "Image.Image", found: "sv.Detections", job: Job) -> None:
    """Set ``found.mask``: the segmenter's mask for each detection some mask control of the job serves (above
    that control's threshold), an empty mask for the others (they become no mask region)."""
    masks = np.zeros((len(found), image.height, image.width), dtype=bool)
    wanted = [i for i in range(len(found)) if _served_as_mask(job, str(found.data["class_name"][i]),
                                                              None if found.confidence is None else found.confidence[i])]
    if wanted:
        masks[wanted] = segmenter.segment_boxes(image, found.xyxy[wanted])
    found.mask = masks


def _served_as_mask(job: Job, label: str, score: float | None) -> bool:
    for control in (c for c in job.schema.controls_for(label) if c.draws_masks):
        bar = job.threshold(control, label)
        if bar is not None and (score is None or score > bar):
            return True
    return False
