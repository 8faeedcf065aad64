"""Grounding DINO detection for groundloop: prompts from Label Studio classes, detections, uncertainty.

Names are imported on first use (PEP 562), so ``from model import ClassSpec`` does not load torch: the command
line's ``--help`` and ``status`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClassSpec": "model.prompts",
    "Prompt": "model.prompts",
    "build_prompts": "model.prompts",
    "DetectionSettings": "model.config",
    "TrainingConfig": "model.config",
    "Detector": "model.detector",
    "Segmenter": "model.segmenter",
    "build_full_size_model": "model.factory",
    "build_sam_base_segmenter": "model.factory",
    "build_small_model": "model.factory",
    "build_small_segmenter": "model.factory",
    "ModelSourceError": "model.sources",
    "check_model_source": "model.sources",
    "copy_model": "model.sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
