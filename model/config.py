"""The knobs of detection and fine-tuning, with their defaults written once (``Settings`` reads them from here).

Plain dataclasses without heavy imports, so the command line can show them without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass


MIN_SLICE_SIZE = 64
"""Smallest tile: the tile count grows with the inverse square of its side, so tiny tiles would hold the detector
for minutes per image."""
CPU_PRECISIONS = ("auto", "bf16", "fp32")


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
    slice_size: int = 0
    """Sliced inference (see ``model.slicing``): besides the whole image, the model also looks at overlapping
    square tiles of this many pixels of the ORIGINAL image, for small objects in large images; 0: off. An image
    no larger than a tile is not sliced."""
    slice_overlap: float = 0.2
    """Share of a tile's side that neighbouring tiles overlap, in [0, 1)."""
    cpu_precision: str = "auto"
    """The forward pass on a CPU: ``bf16`` autocast, ``fp32``, or ``auto`` (bf16 where the CPU has bfloat16
    instructions, see ``devices.cpu_has_bf16``). A GPU always runs under bf16/fp16 autocast."""

    def __post_init__(self):
        if self.slice_size < 0 or (self.slice_size and self.slice_size < MIN_SLICE_SIZE):
            raise ValueError(f"slice_size {self.slice_size}: 0 (off) or at least {MIN_SLICE_SIZE} pixels")
        if not 0.0 <= self.slice_overlap < 1.0:
            raise ValueError(f"slice_overlap {self.slice_overlap} is outside [0, 1)")
        if self.cpu_precision not in CPU_PRECISIONS:
            raise ValueError(f"cpu_precision {self.cpu_precision!r} is not one of {', '.join(CPU_PRECISIONS)}")


EVAL_SETTINGS = DetectionSettings(box_threshold=0.01, text_threshold=0.0, max_detections=100)
"""mAP ranks every candidate, so validation keeps low-confidence boxes that serving would drop."""


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 10
    batch_size: int = 4
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    """How the rate moves over the planned steps after warm-up: ``constant``, ``linear`` or ``cosine`` decay
    (transformers' schedulers). Constant by measurement: with cosine and warm-up the demo's first round learned
    more, but its later rounds were rejected (bench/demo/time_saved.md)."""
    warmup_fraction: float = 0.0
    """Share of the planned steps over which the rate rises from 0."""
    weight_decay: float = 1e-4
    max_grad_norm: float = 0.1
    patience: int = 3
    """Stop after this many epochs without a better validation mAP."""
    freeze_backbone: bool = True
    freeze_text_encoder: bool = True
    hflip_probability: float = 0.5
    scale_jitter: float = 0.2
    """Shortest edge drawn per batch from [size * (1 - j), size * (1 + j)]."""
    seed: int = 0
    device: str = "auto"
