"""A video file -> tracks: the detector on every ``stride``-th frame, ByteTrack linking the detections into tracks.

Frames are numbered as Label Studio numbers them (``FrameClock``: its ``frameRate``, not the file's), so a keyframe
lands where the annotator sees it. Each class gets its own tracker (the ``trackers`` package's ByteTrack), so a
track never changes its label. A track is a run of keyframes, one per detected frame it was matched in; Label
Studio interpolates between them. Where a track was not matched for a while and then found again, the keyframe
before the gap is written ``enabled: false`` (the object is hidden until it reappears), as is a track's last one.

Frames are decoded one at a time and detected ``batch_size`` at a time: memory stays at a few frames whatever the
video's length. A video with more than ``max_frames`` frames at the stride is detected at a larger stride (logged),
so it is covered to its end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from active_learning.labelstudio.video_regions import Keyframe, VideoTrack
from active_learning.video.config import TrackingSettings
from active_learning.video.frames import FrameClock, VideoInfo, probe, read_frames

if TYPE_CHECKING:
    import supervision as sv
    from PIL import Image

log = logging.getLogger(__name__)

Detect = Callable[[Sequence["Image.Image"]], list["sv.Detections"]]
"""Frames -> their detections (``data["class_name"]``, ``confidence``), only those worth a box."""


class OverBudget(Exception):
    """The deadline passed before the video was done: finish it in the background."""


@dataclass(frozen=True)
class TrackedVideo:
    tracks: list[VideoTrack]
    info: VideoInfo
    clock: FrameClock
    stride: int
    """The stride used (larger than asked for when the video is long)."""
    uncertainty: float
    """Mean of the detected frames' uncertainties (the detector's ``metadata["uncertainty"]``), 1.0 for none."""


def track_video(path: str | Path, detect: Detect, framerate: float, settings: TrackingSettings,
                batch_size: int = 4, deadline: float | None = None) -> TrackedVideo:
    """Detect and track the video at ``path``; ``deadline`` (``time.monotonic()``) raises ``OverBudget`` once passed.
    Raises ``VideoError`` when the file cannot be read."""
    clock = FrameClock(probe(path), framerate)
    stride = max(settings.stride, math.ceil(clock.frames_count / settings.max_frames))
    if stride != settings.stride:
        log.info("video %s: %d frames, detecting every %d-th (not every %d-th) to stay within %d frames",
                 Path(path).name, clock.frames_count, stride, settings.stride, settings.max_frames)
    numbers = clock.numbers(stride)
    linker = _Linker(settings, framerate / stride)
    uncertainties: list[float] = []
    started, batch, done = time.monotonic(), [], 0
    for frame in read_frames(path, numbers, framerate):
        batch.append(frame)
        if len(batch) < batch_size:
            continue
        before, done = done, done + _detect_batch(batch, detect, linker, uncertainties, clock, deadline)
        batch = []
        _log_progress(path, before, done, len(numbers), started)
    if batch:
        done += _detect_batch(batch, detect, linker, uncertainties, clock, deadline)
    log.info("video %s: %d frames detected in %.1f s, %d tracks", Path(path).name, done, time.monotonic() - started,
             len(linker.tracks(stride)))
    return TrackedVideo(linker.tracks(stride), clock.info, clock, stride,
                        float(np.mean(uncertainties)) if uncertainties else 1.0)


def _detect_batch(batch, detect: Detect, linker: "_Linker", uncertainties: list[float], clock: FrameClock,
                  deadline: float | None) -> int:
    if deadline is not None and time.monotonic() >= deadline:
        raise OverBudget(f"the time budget was spent at frame {batch[0].number} of {clock.frames_count}")
    for frame, found in zip(batch, detect([frame.image for frame in batch])):
        uncertainties.append(float(found.metadata.get("uncertainty", 1.0)))
        linker.add(frame.number, clock.time(frame.number), found)
    return len(batch)


def _log_progress(path: str | Path, before: int, done: int, total: int, started: float) -> None:
    """A line each time another tenth of the frames is done."""
    if (before * 10) // total != (done * 10) // total:
        elapsed = time.monotonic() - started
        log.info("video %s: %d/%d frames detected, %.0f s, about %.0f s to go", Path(path).name, done, total, elapsed,
                 elapsed / max(done, 1) * (total - done))


class _Linker:
    """One ByteTrack per class; the keyframes of every track id it confirms. ByteTrack names a track from its
    second match on (the first is returned unconfirmed), so that first detection is prepended when it names it."""

    def __init__(self, settings: TrackingSettings, sampled_rate: float):
        self.settings = settings
        self.sampled_rate = sampled_rate
        self._trackers: dict[str, object] = {}
        self._keyframes: dict[tuple[str, int], list[Keyframe]] = {}
        self._unconfirmed: dict[str, list[Keyframe]] = {}

    def add(self, number: int, seconds: float, found: "sv.Detections") -> None:
        names = [str(name) for name in found.data.get("class_name", [])]
        for label in dict.fromkeys(names + list(self._trackers)):  # trackers of absent classes age their tracks
            mine = found[np.array([name == label for name in names], dtype=bool)] if names else found[:0]
            tracked = self._tracker(label).update(_plain(mine), timestamp=seconds)
            unconfirmed = []
            for box, score, track_id in zip(tracked.xyxy, _scores(tracked), tracked.tracker_id):
                keyframe = Keyframe(number, tuple(float(v) for v in box), True, score)
                if track_id < 0:
                    unconfirmed.append(keyframe)
                    continue
                key = (label, int(track_id))
                if key not in self._keyframes:  # confirmed now: its first detection came a frame before, unnamed
                    self._keyframes[key] = self._first(label, keyframe)
                self._keyframes[key].append(keyframe)
            self._unconfirmed[label] = unconfirmed

    def _first(self, label: str, keyframe: Keyframe) -> list[Keyframe]:
        """The previous frame's unconfirmed detection this new track started from (most overlap), if any."""
        import supervision as sv

        candidates = self._unconfirmed.get(label, [])
        if not candidates:
            return []
        overlaps = sv.box_iou_batch(np.array([c.box for c in candidates]), np.array([keyframe.box]))[:, 0]
        best = int(np.argmax(overlaps))
        return [candidates.pop(best)] if overlaps[best] >= self.settings.match_iou else []

    def tracks(self, stride: int) -> list[VideoTrack]:
        tracks = []
        for (label, _), keyframes in sorted(self._keyframes.items(), key=lambda item: item[1][0].frame):
            if len(keyframes) < self.settings.min_keyframes:
                continue
            marked = [dataclasses.replace(k, enabled=nxt.frame - k.frame <= stride)
                      for k, nxt in zip(keyframes, keyframes[1:])] + [dataclasses.replace(keyframes[-1], enabled=False)]
            scores = [k.score for k in keyframes if k.score is not None]
            tracks.append(VideoTrack(label, tuple(marked), score=float(np.mean(scores)) if scores else None))
        return tracks

    def _tracker(self, label: str):
        if label not in self._trackers:
            from trackers import ByteTrackTracker  # imports scipy and cv2: only when a video is tracked

            # every detection here already passed the job's threshold: each may start or continue a track
            self._trackers[label] = ByteTrackTracker(
                lost_track_buffer=round(self.settings.lost_seconds * 30), frame_rate=self.sampled_rate,
                track_activation_threshold=0.0, high_conf_det_threshold=0.0, minimum_consecutive_frames=1,
                minimum_iou_threshold=self.settings.match_iou)
        return self._trackers[label]


def _plain(found: "sv.Detections") -> "sv.Detections":
    """Boxes and scores only: the tracker needs nothing else (and a label per class is ours to keep)."""
    import supervision as sv

    return sv.Detections(xyxy=np.asarray(found.xyxy, dtype=float).reshape(-1, 4),
                         confidence=None if found.confidence is None else np.asarray(found.confidence, dtype=float))


def _scores(tracked: "sv.Detections") -> list[float | None]:
    if tracked.confidence is None:
        return [None] * len(tracked)
    return [float(score) for score in tracked.confidence]
