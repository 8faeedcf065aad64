"""Grounding DINO detection for groundloop: prompts from Label Studio classes, detections, uncertainty."""

from model.detector import Detector
from model.factory import build_full_size_model, build_small_model
from model.postprocess import DetectionSettings
from model.prompts import ClassSpec, Prompt, build_prompts

__all__ = [
    "ClassSpec",
    "DetectionSettings",
    "Detector",
    "Prompt",
    "build_full_size_model",
    "build_prompts",
    "build_small_model",
]
