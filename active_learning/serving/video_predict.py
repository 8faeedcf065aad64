"""A video task's prediction: its tracks as Label Studio ``videorectangle`` regions, and a score.

The video is streamed to the video cache (``VideoCache``: the image fetcher's URL rules, ``max_video_bytes``), then
tracked (``active_learning.video.tracking``) with the job's classes, detection settings and thresholds: a detection
is kept for tracking when it passes the threshold of a control that offers its label, and each track becomes a
region of every such control. The score is the mean uncertainty of the detected frames (low: look first).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Sequence

import numpy as np

from active_learning.labelstudio.video_regions import regions_from_tracks
from active_learning.serving.jobs import Job
from active_learning.video.tracking import TrackedVideo, track_video

if TYPE_CHECKING:
    import supervision as sv
    from PIL import Image

    from model import Detector

VIDEOS_AT_ONCE = threading.BoundedSemaphore(1)
"""Videos a process tracks at once: one holds the detector for minutes; images go on between its batches."""


def predict_video(detector: "Detector", path, job: Job, deadline: float | None = None) -> tuple[list[dict], float]:
    """Regions and score of the video at ``path``; ``OverBudget`` past ``deadline``, ``VideoError`` if unreadable."""
    def detect(images: Sequence["Image.Image"]) -> list["sv.Detections"]:
        return [_served(found, job) for found in detector.detect(list(images), list(job.classes), job.detection)]

    with VIDEOS_AT_ONCE:
        tracked = track_video(path, detect, job.schema.framerate, job.tracking, deadline=deadline)
    return video_regions(tracked, job), tracked.uncertainty


def video_regions(tracked: TrackedVideo, job: Job) -> list[dict]:
    """Each track as a region of every control that offers its label (and serves it: ``Job.threshold``)."""
    regions = []
    for control in job.schema.controls:
        served = [track for track in tracked.tracks
                  if track.label in {spec.name for spec in control.classes}
                  and job.threshold(control, track.label) is not None]
        regions += regions_from_tracks(served, from_name=control.name, to_name=job.schema.image_name,
                                       width=tracked.info.width, height=tracked.info.height,
                                       frames_count=tracked.clock.frames_count, duration=tracked.clock.duration,
                                       framerate=tracked.clock.framerate)
    for i, region in enumerate(regions):
        region["id"] = f"t{i}"
    return regions


def _served(found: "sv.Detections", job: Job) -> "sv.Detections":
    """The detections above the threshold of a control offering their label (one tracked box per detection)."""
    names = [str(name) for name in found.data.get("class_name", [])]
    scores = found.confidence if found.confidence is not None else np.ones(len(found))
    keep = []
    for name, score in zip(names, scores):
        bars = [job.threshold(control, name) for control in job.schema.controls_with(name)]
        bars = [bar for bar in bars if bar is not None]
        keep.append(bool(bars) and score > min(bars))
    return found[np.array(keep, dtype=bool)] if len(found) else found
