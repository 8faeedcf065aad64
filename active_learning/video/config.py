"""How videos are sampled and tracked: a plain value, built by ``Settings.tracking_settings`` (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrackingSettings:
    """How a video is sampled and its detections linked; part of a video job's cache key."""

    stride: int = 5
    """Detect every ``stride``-th frame (Label Studio's frames); Label Studio interpolates in between."""
    lost_seconds: float = 1.0
    """How long a track may go unmatched and still continue when its object is found again."""
    min_keyframes: int = 2
    """Tracks matched in fewer detected frames are dropped: one-frame flickers are no objects."""
    match_iou: float = 0.1
    """IoU a detection needs with a track's predicted box to continue it."""
    max_frames: int = 2000
    """Frames detected per video at most: a longer video gets a larger stride."""

    def __post_init__(self) -> None:
        if self.stride < 1 or self.min_keyframes < 1 or self.max_frames < 1:
            raise ValueError("video stride, min keyframes and max frames must be at least 1")
        if not (self.lost_seconds >= 0 and 0 <= self.match_iou <= 1):
            raise ValueError("video lost seconds must be >= 0 and match IoU within [0, 1]")
