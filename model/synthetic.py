"""Synthetic labeled images (coloured shapes with exact boxes) for tests, the demo and benchmarks.

Real datasets cannot be downloaded here; shapes with known boxes give a task the small model can learn in
minutes on a CPU, so the whole loop (predict, correct, fine-tune, evaluate, promote) can be shown offline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import supervision as sv
from PIL import Image, ImageDraw

from model.prompts import ClassSpec

SHAPE_CLASSES = (
    ClassSpec("red square"),
    ClassSpec("blue circle", aliases=("blue disc",)),
    ClassSpec("green triangle"),
)
_COLOURS = {"red square": (220, 30, 30), "blue circle": (30, 60, 220), "green triangle": (30, 170, 60)}


@dataclass
class SyntheticImage:
    image: Image.Image
    targets: sv.Detections
    """Pixel xyxy boxes; ``class_id`` indexes ``SHAPE_CLASSES``."""


def make_shapes_image(rng: random.Random, size: int = 128, max_shapes: int = 3) -> SyntheticImage:
    """One image with 0..max_shapes non-overlapping shapes on a noisy grey background."""
    image = _noisy_grey(rng, size)
    draw = ImageDraw.Draw(image)
    boxes, class_ids = [], []
    for _ in range(rng.randint(0, max_shapes)):
        side = rng.randint(size // 6, size // 3)
        for _attempt in range(10):
            x1, y1 = rng.randint(0, size - side), rng.randint(0, size - side)
            box = (x1, y1, x1 + side, y1 + side)
            if _clear_of(box, boxes):
                break
        else:
            continue
        class_id = rng.randrange(len(SHAPE_CLASSES))
        name = SHAPE_CLASSES[class_id].name
        _draw_shape(draw, name, box)
        boxes.append(box)
        class_ids.append(class_id)
    targets = sv.Detections(xyxy=np.array(boxes, dtype=float).reshape(-1, 4), class_id=np.array(class_ids, dtype=int))
    return SyntheticImage(image, targets)


def make_small_shapes_image(rng: random.Random, size: int, count: int, min_side: int,
                            max_side: int) -> SyntheticImage:
    """A ``size`` px image of the same noisy grey with exactly ``count`` non-overlapping shapes of ``min_side`` to
    ``max_side`` px: small objects in a large image, for sliced inference."""
    image = _noisy_grey(rng, size)
    draw = ImageDraw.Draw(image)
    boxes, class_ids = [], []
    while len(boxes) < count:
        side = rng.randint(min_side, max_side)
        x1, y1 = rng.randint(0, size - side), rng.randint(0, size - side)
        box = (x1, y1, x1 + side, y1 + side)
        if _clear_of(box, boxes):
            class_ids.append(rng.randrange(len(SHAPE_CLASSES)))
            _draw_shape(draw, SHAPE_CLASSES[class_ids[-1]].name, box)
            boxes.append(box)
    targets = sv.Detections(xyxy=np.array(boxes, dtype=float).reshape(-1, 4), class_id=np.array(class_ids, dtype=int))
    return SyntheticImage(image, targets)


def make_shapes_dataset(count: int, seed: int = 0, size: int = 128) -> list[SyntheticImage]:
    rng = random.Random(seed)
    return [make_shapes_image(rng, size) for _ in range(count)]


def _noisy_grey(rng: random.Random, size: int) -> Image.Image:
    """The background of every synthetic image: ``size`` px of grey noise."""
    noise = np.random.default_rng(rng.randrange(2**32)).integers(90, 160, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(noise, "RGB")


def _clear_of(box: tuple[int, int, int, int], boxes: list) -> bool:
    """Whether ``box`` overlaps none of ``boxes`` (xyxy)."""
    return all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes)


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, box: tuple[int, int, int, int]) -> None:
    colour = _COLOURS[name]
    if name == "red square":
        draw.rectangle(box, fill=colour)
    elif name == "blue circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([(box[0], box[3]), ((box[0] + box[2]) / 2, box[1]), (box[2], box[3])], fill=colour)


def write_shapes_video(path, frames: int = 48, fps: float = 24.0, width: int = 320, height: int = 240,
                       seed: int = 0) -> list[sv.Detections]:
    """A video file of shapes moving on known paths over a fixed noisy background: a red square left to right, a
    blue circle top to bottom, both all the way, and a green triangle in the first half only (MPEG-4 Part 2 for
    ``.mp4``, else Motion JPEG: codecs every OpenCV build writes). Returns the true boxes of each of the file's frames
    (``class_id`` indexes ``SHAPE_CLASSES``)."""
    import cv2

    background = np.random.default_rng(seed).integers(90, 160, (height, width, 3), dtype=np.uint8)
    side = min(width, height) // 5
    codec = "mp4v" if str(path).endswith(".mp4") else "MJPG"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    truth = []
    try:
        for n in range(frames):
            t = n / max(frames - 1, 1)
            shapes = [(0, (round(t * (width - side - 1)), height // 8)),
                      (1, (width - side - width // 8, round(t * (height - side - 1))))]
            if n < frames // 2:
                shapes.append((2, (width // 3, height - side - 4 - round(t * height / 4))))
            image = Image.fromarray(background.copy(), "RGB")
            draw = ImageDraw.Draw(image)
            boxes = [(x, y, x + side, y + side) for _, (x, y) in shapes]
            for (class_id, _), box in zip(shapes, boxes):
                _draw_shape(draw, SHAPE_CLASSES[class_id].name, box)
            writer.write(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))
            truth.append(sv.Detections(xyxy=np.array(boxes, dtype=float),
                                       class_id=np.array([c for c, _ in shapes], dtype=int)))
    finally:
        writer.release()
    return truth


TEAM_PHRASE = "square"
TEAM_LABELS = (ClassSpec("red team", aliases=(TEAM_PHRASE,)), ClassSpec("blue team", aliases=(TEAM_PHRASE,)))
"""Two labels language cannot tell apart: the same shape, told apart only by its colour. They share the phrase
``square`` (``predicted_values``), so the detector finds squares and the crop classifier names the team."""
_TEAM_COLOURS = ((210, 40, 40), (40, 40, 210))


def make_teams_image(rng: random.Random, size: int = 128, max_squares: int = 3) -> SyntheticImage:
    """One image with 1..max_squares squares, red or blue at random, on a noisy grey background; ``class_id``
    indexes ``TEAM_LABELS``."""
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(90, 160, (size, size, 3)).astype(int)
    boxes, teams = [], []
    for slot in range(rng.randint(1, max_squares)):  # one column of the image each: they never overlap
        side = rng.randint(size // 6, size // 4)
        x1 = slot * size // max_squares + rng.randint(0, size // max_squares - side)
        y1 = rng.randint(0, size - side)
        team = rng.randrange(len(TEAM_LABELS))
        jitter = np.array([rng.randint(-30, 30) for _ in range(3)])
        pixels[y1:y1 + side, x1:x1 + side] = np.array(_TEAM_COLOURS[team]) + jitter
        boxes.append((x1, y1, x1 + side, y1 + side))
        teams.append(team)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    targets = sv.Detections(xyxy=np.array(boxes, dtype=float).reshape(-1, 4), class_id=np.array(teams, dtype=int))
    return SyntheticImage(image, targets)


def make_teams_dataset(count: int, seed: int = 0, size: int = 128) -> list[SyntheticImage]:
    rng = random.Random(seed)
    return [make_teams_image(rng, size) for _ in range(count)]
