"""Masks for the boxes that mask controls serve: Grounded SAM's second step.

The segmenter (``Settings.segmenter``) is not fine-tuned and serves every model version alike, so a process
holds one per source and device, loaded the first time a job needs masks (a box-only deployment never loads it).
A segmenter that cannot load fails the tasks that need it with one line saying why, and is not tried again for
``RETRY_SECONDS`` (each try may cost the hub probe's seconds).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from active_learning.serving.jobs import Job

if TYPE_CHECKING:
    import supervision as sv
    import torch
    from PIL import Image

    from model.segmenter import Segmenter

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0

_loaded: dict[tuple[str, str], "Segmenter"] = {}
_failed: dict[tuple[str, str], tuple[float, str]] = {}
_lock = threading.Lock()


class SegmenterUnavailable(RuntimeError):
    """The segmenter cannot be loaded; the message says which, why and what to do."""


def shared_segmenter(source: str, device: "torch.device | str") -> "Segmenter":
    """The process's segmenter for ``source`` on ``device`` (the detector's: the same device rules)."""
    from model.segmenter import Segmenter
    from model.sources import SEGMENTER, check_model_source

    key = (source, str(device))
    with _lock:
        if key in _loaded:
            return _loaded[key]
        failed = _failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < RETRY_SECONDS:
            raise SegmenterUnavailable(failed[1])
        try:
            check_model_source(source, SEGMENTER)
            log.info("loading the segmenter %s on %s (a project's config draws masks)", source, device)
            _loaded[key] = Segmenter.load(source, device=str(device))
        except Exception as exc:  # noqa: BLE001 - a hub id, a directory, a broken checkpoint: one line for all
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            message = (f"no masks: {reason} (set --segmenter / GROUNDLOOP_SEGMENTER to a SAM-family hub id or "
                       "save_pretrained directory; groundloop copy-models copies one)")
            _failed[key] = (time.monotonic(), message)
            log.error("segmenter %s: %s", source, message)
            raise SegmenterUnavailable(message) from None
        return _loaded[key]


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
