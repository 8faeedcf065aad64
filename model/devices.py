"""Where a model runs and at which precision: the one rule the detector and the segmenter share."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


def resolve_device(device: str) -> str:
    """``"auto"``: CUDA when present, else CPU; anything else as given (``cpu``, ``cuda``, ``cuda:1`` ...)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def inference_autocast(device: torch.device, cpu_precision: str = "fp32"):
    """bfloat16 (else float16) autocast on CUDA. On a CPU, bfloat16 autocast for ``cpu_precision="bf16"``, and for
    ``"auto"`` where the CPU has bfloat16 instructions (``cpu_has_bf16``); full precision otherwise."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and (cpu_precision == "bf16" or (cpu_precision == "auto" and cpu_has_bf16())):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether the CPU computes in bfloat16 natively (``avx512_bf16`` or ``amx_bf16`` among its Linux flags): there
    the detector's forward takes 0.62x the fp32 time (bench/results/cpu_options.md); elsewhere bfloat16 is emulated
    and not measured to pay."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
