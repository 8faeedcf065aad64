"""Label Studio video rectangles <-> tracks: the one place where ``videorectangle`` regions become pixels and back.

A region is one object over time: ``value`` holds ``framesCount``, ``duration``, ``labels`` and a ``sequence`` of
keyframes ``{frame (1-based), enabled, rotation, x, y, width, height (percent of the frame), time}`` (Label
Studio's video editor, web/libs/editor/src/regions/VideoRectangleRegion). Between two keyframes Label Studio
draws the box interpolated linearly in the frame number, unless the earlier keyframe is ``enabled: false``: then
the object is hidden until the next keyframe. Nothing is shown before the first keyframe or after the last.
groundloop works in pixel corners ``[x1, y1, x2, y2]`` of the video's frame (``VideoTrack``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from active_learning.labelstudio.config import VIDEO_BOXES
from active_learning.labelstudio.regions import MAX_PERCENT, _pixel_box

MAX_KEYFRAMES = 100_000
"""Keyframes of one result read: more is no drawing, it is garbage (and would hold a webhook)."""

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Keyframe:
    frame: int
    """Label Studio's frame number, 1-based."""
    box: Box
    """Pixel corners in the video's frame."""
    enabled: bool = True
    """False: the object disappears after this keyframe (until the next one, if any)."""
    score: float | None = None


@dataclass(frozen=True)
class VideoTrack:
    label: str
    keyframes: tuple[Keyframe, ...]
    """Increasing frame numbers."""
    from_name: str | None = None
    score: float | None = None

    def box_at(self, frame: int) -> Box | None:
        """Label Studio's interpolation: the box shown at ``frame``; None where the object is not shown."""
        for before, after in zip(self.keyframes, self.keyframes[1:]):
            if before.frame <= frame < after.frame:
                if not before.enabled:
                    return before.box if frame == before.frame else None
                t = (frame - before.frame) / (after.frame - before.frame)
                return tuple(a + t * (b - a) for a, b in zip(before.box, after.box))
        last = self.keyframes[-1] if self.keyframes else None
        return last.box if last is not None and frame == last.frame else None

    def frames(self) -> list[int]:
        """Every frame where the object is shown."""
        if not self.keyframes:
            return []
        return [n for n in range(self.keyframes[0].frame, self.keyframes[-1].frame + 1) if self.box_at(n) is not None]


def regions_from_tracks(tracks: Sequence[VideoTrack], *, from_name: str, to_name: str, width: int, height: int,
                        frames_count: int, duration: float, framerate: float) -> list[dict[str, Any]]:
    """One ``videorectangle`` region per track (tracks without keyframes skipped): keyframe ``time`` is
    ``frame / framerate`` (as Label Studio writes it), coordinates in percent clipped to the frame, and the last
    keyframe always ``enabled: false``."""
    regions = []
    for track in tracks:
        if not track.keyframes:
            continue
        sequence = []
        for i, keyframe in enumerate(track.keyframes):
            x1, y1, x2, y2 = keyframe.box
            x1, x2 = (min(max(v, 0.0), width) for v in (x1, x2))
            y1, y2 = (min(max(v, 0.0), height) for v in (y1, y2))
            sequence.append({"frame": keyframe.frame, "enabled": keyframe.enabled and i < len(track.keyframes) - 1,
                             "rotation": 0, "x": 100.0 * x1 / width, "y": 100.0 * y1 / height,
                             "width": 100.0 * max(x2 - x1, 0.0) / width, "height": 100.0 * max(y2 - y1, 0.0) / height,
                             "time": keyframe.frame / framerate})
        scores = [k.score for k in track.keyframes if k.score is not None]
        score = track.score if track.score is not None else (sum(scores) / len(scores) if scores else None)
        region = {"id": f"t{len(regions)}", "from_name": from_name, "to_name": to_name, "type": VIDEO_BOXES,
                  "value": {"framesCount": frames_count, "duration": duration, "sequence": sequence,
                            "labels": [track.label]}}
        if score is not None:
            region["score"] = float(score)
        regions.append(region)
    return regions


def tracks_from_result(result: list[dict[str, Any]], width: int, height: int,
                       where: str = "result") -> list[VideoTrack]:
    """The ``videorectangle`` regions of a result (other types ignored), one track per (region, label), keyframes
    sorted by frame (a frame given twice keeps the last). Rotated boxes become their axis-aligned bounding box.
    Raises ValueError naming the region for anything malformed."""
    if not isinstance(result, list):
        raise ValueError(f"{where}: expected a list of regions")
    tracks, read = [], 0
    for i, region in enumerate(result):
        if not isinstance(region, dict):
            raise ValueError(f"{where}[{i}]: expected an object")
        if region.get("type") != VIDEO_BOXES:
            continue
        value = region.get("value")
        sequence = value.get("sequence") if isinstance(value, dict) else None
        if not isinstance(sequence, list):
            raise ValueError(f"{where}[{i}].value.sequence: expected a list of keyframes")
        read += len(sequence)
        if read > MAX_KEYFRAMES:
            raise ValueError(f"{where}: more than {MAX_KEYFRAMES} keyframes")
        labels = value.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError(f"{where}[{i}].value.labels: expected a list of strings")
        by_frame = {}
        for j, keyframe in enumerate(sequence):
            parsed = _keyframe(keyframe, f"{where}[{i}].value.sequence[{j}]", (width, height))
            by_frame[parsed.frame] = parsed
        keyframes = tuple(by_frame[n] for n in sorted(by_frame))
        from_name = region.get("from_name") if isinstance(region.get("from_name"), str) else None
        tracks += [VideoTrack(label, keyframes, from_name) for label in labels]
    return tracks


def sample_frames(tracks: Sequence[VideoTrack], every: int, limit: int, frames_count: int) -> list[int]:
    """Training frames of a video: every ``every``-th of the frames where any track is shown (of all its
    ``frames_count`` frames when it has no track: an empty annotation says "nothing here"), evenly thinned to at
    most ``limit``."""
    shown = sorted({n for track in tracks for n in track.frames()}) if tracks else list(range(1, frames_count + 1))
    shown = shown[::max(every, 1)]
    if len(shown) <= limit:
        return shown
    step = len(shown) / limit
    return [shown[int(k * step)] for k in range(limit)]


def _keyframe(keyframe: Any, where: str, size: tuple[int, int]) -> Keyframe:
    if not isinstance(keyframe, dict):
        raise ValueError(f"{where}: expected an object")
    frame = keyframe.get("frame")
    if isinstance(frame, bool) or not isinstance(frame, (int, float)) or frame != int(frame) or frame < 1:
        raise ValueError(f"{where}.frame: expected a whole number from 1")
    try:
        x, y, w, h = (float(keyframe[k]) for k in ("x", "y", "width", "height"))
        rotation = float(keyframe.get("rotation") or 0.0)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: needs numeric x, y, width, height") from None
    if not all(math.isfinite(v) and abs(v) <= MAX_PERCENT for v in (x, y, w, h, rotation)) or w < 0 or h < 0:
        raise ValueError(f"{where}: x, y, width, height and rotation must be finite numbers within "
                         f"±{MAX_PERCENT:g} (percent of the frame; degrees), width and height not negative")
    enabled = keyframe.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"{where}.enabled: expected true or false")
    return Keyframe(int(frame), tuple(_pixel_box(x, y, w, h, rotation, size)), enabled)
