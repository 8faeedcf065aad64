"""Reading a local video file one frame at a time, numbered the way Label Studio numbers frames.

Label Studio never reads the file's own frame rate: its ``<Video frameRate="...">`` attribute (default 24) says
how many of ITS frames a second has, a video has ``ceil(duration * frameRate)`` of them (``framesCount``), and they
are numbered from 1. Label Studio's own ML backend (label-studio-ml-backend, examples/yolo, video_rectangle.py)
writes the file's frame ``i`` (0-based) as frame ``i + 1`` with ``time = (i + 1) * duration / framesCount``; we
do the same: at equal rates Label Studio's frame ``n`` is the file's frame ``n - 1``, and ``FrameClock`` maps one
onto the other when the rates differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
from PIL import Image

from active_learning.labelstudio.config import DEFAULT_FRAMERATE



class VideoError(Exception):
    """A video that cannot be read; the message is one line, fit to show a user."""


@dataclass(frozen=True)
class VideoInfo:
    """What the file says about itself."""

    frame_count: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frame_count / self.fps


@dataclass(frozen=True)
class FrameClock:
    """Label Studio's frame numbers for one video file, at Label Studio's ``framerate``."""

    info: VideoInfo
    framerate: float = DEFAULT_FRAMERATE

    def __post_init__(self) -> None:
        if not (math.isfinite(self.framerate) and self.framerate > 0):
            raise ValueError(f"frame rate {self.framerate!r} must be a positive number")

    @property
    def frames_count(self) -> int:
        """Label Studio's ``framesCount``: its last frame number."""
        return max(1, math.ceil(self.info.duration * self.framerate - 1e-9))

    @property
    def duration(self) -> float:
        return self.info.duration

    def time(self, number: int) -> float:
        """The ``time`` Label Studio writes for frame ``number``."""
        return number / self.framerate

    def index(self, number: int) -> int:
        """The file's frame (0-based) that Label Studio shows as frame ``number``."""
        index = math.floor((number - 1) * self.info.fps / self.framerate + 1e-6)
        return min(max(index, 0), self.info.frame_count - 1)

    def numbers(self, stride: int = 1, max_frames: int | None = None) -> list[int]:
        """Frames 1, 1 + stride, 1 + 2 * stride, ... up to ``frames_count``, at most ``max_frames`` of them."""
        if stride < 1:
            raise ValueError(f"stride {stride} must be at least 1")
        numbers = range(1, self.frames_count + 1, stride)
        return list(numbers if max_frames is None else numbers[:max(0, max_frames)])


@dataclass(frozen=True)
class VideoFrame:
    number: int
    """Label Studio's frame number (1-based)."""
    index: int
    """The file's frame (0-based)."""
    image: Image.Image
    """RGB."""


def probe(path: str | Path) -> VideoInfo:
    """The file's frame count, frame rate and size; ``VideoError`` if it is no video OpenCV can read."""
    capture = _open(path)
    try:
        return _info(capture, path)
    finally:
        capture.release()


def read_frames(path: str | Path, numbers: Iterable[int], framerate: float = DEFAULT_FRAMERATE
                ) -> Iterator[VideoFrame]:
    """The frames with these Label Studio numbers, in increasing order, decoded one at a time.

    The file is read front to back once: frames in between are skipped without being converted. A file that
    ends before its declared frame count just yields fewer frames; one that yields none raises ``VideoError``.
    """
    capture = _open(path)
    try:
        clock = FrameClock(_info(capture, path), framerate)
        position = 0  # the file's next frame
        last: VideoFrame | None = None
        for number in sorted(set(numbers)):
            if number < 1:
                continue
            index = clock.index(number)
            if last is not None and index == last.index:  # Label Studio has more frames a second than the file
                last = VideoFrame(number, index, last.image)
                yield last
                continue
            while position < index and capture.grab():
                position += 1
            ok = position == index and capture.grab()
            pixels = capture.retrieve()[1] if ok else None
            if pixels is None:
                if last is None:
                    raise VideoError(f"video {_name(path)}: frame {number} cannot be decoded")
                break  # the file ends before its declared frame count
            position += 1
            last = VideoFrame(number, index, Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)))
            yield last
    finally:
        capture.release()


def iter_frames(path: str | Path, stride: int = 1, framerate: float = DEFAULT_FRAMERATE,
                max_frames: int | None = None) -> Iterator[VideoFrame]:
    """Every ``stride``-th Label Studio frame from frame 1 (see ``FrameClock.numbers``), one at a time."""
    clock = FrameClock(probe(path), framerate)
    return read_frames(path, clock.numbers(stride, max_frames), framerate)


def _open(path: str | Path) -> cv2.VideoCapture:
    if not Path(path).is_file():
        raise VideoError(f"video {_name(path)}: no such file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"video {_name(path)} cannot be opened: not a video OpenCV can read")
    return capture


def _info(capture: cv2.VideoCapture, path: str | Path) -> VideoInfo:
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    fps = capture.get(cv2.CAP_PROP_FPS)
    width, height = capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
    if not (math.isfinite(count) and count >= 1):
        raise VideoError(f"video {_name(path)} has no frames")
    if not (math.isfinite(fps) and fps > 0):
        raise VideoError(f"video {_name(path)} has no frame rate")
    if not (width >= 1 and height >= 1):
        raise VideoError(f"video {_name(path)} has no frame size")
    return VideoInfo(frame_count=int(count), fps=float(fps), width=int(width), height=int(height))


def _name(path: str | Path) -> str:
    return repr(Path(path).name)[:80]
