"""Where a model runs and at which precision: the one rule the detector and the segmenter share."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str) -> str:
    """``"auto"``: CUDA when present, else CPU; anything else as given (``cpu``, ``cuda``, ``cuda:1`` ...)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def inference_autocast(device: torch.device):
    """bfloat16 (else float16) autocast on CUDA; full precision elsewhere (CPU answers stay those of fp32)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)
