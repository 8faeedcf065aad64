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
    noise = np.random.default_rng(rng.randrange(2**32)).integers(90, 160, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(image)
    boxes, class_ids = [], []
    for _ in range(rng.randint(0, max_shapes)):
        side = rng.randint(size // 6, size // 3)
        for _attempt in range(10):
            x1, y1 = rng.randint(0, size - side), rng.randint(0, size - side)
            box = (x1, y1, x1 + side, y1 + side)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                break
        else:
            continue
        class_id = rng.randrange(len(SHAPE_CLASSES))
        name = SHAPE_CLASSES[class_id].name
        colour = _COLOURS[name]
        if name == "red square":
            draw.rectangle(box, fill=colour)
        elif name == "blue circle":
            draw.ellipse(box, fill=colour)
        else:
            draw.polygon([(box[0], box[3]), ((box[0] + box[2]) / 2, box[1]), (box[2], box[3])], fill=colour)
        boxes.append(box)
        class_ids.append(class_id)
    targets = sv.Detections(xyxy=np.array(boxes, dtype=float).reshape(-1, 4), class_id=np.array(class_ids, dtype=int))
    return SyntheticImage(image, targets)


def make_shapes_dataset(count: int, seed: int = 0, size: int = 128) -> list[SyntheticImage]:
    rng = random.Random(seed)
    return [make_shapes_image(rng, size) for _ in range(count)]


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
