"""Sliced inference (SAHI, Akyon et al. 2022): small objects in large images, seen at a larger scale.

The processor resizes every image to a fixed shortest edge (800 by default), so in a 4000 px photo a 30 px
object shrinks to 6 px and the model misses it. With ``DetectionSettings.slice_size`` set, ``Detector.detect``
also runs the model on overlapping square tiles of ``slice_size`` pixels cut from the ORIGINAL image (each then
resized like any image, so a small object becomes large), maps the tiles' boxes back to image coordinates and
merges them with the whole image's own boxes (kept, as SAHI does, so large objects split by tile borders are still
found whole) through the usual per-class NMS and ``max_detections`` cap (``postprocess.select_detections``).

Why not ``supervision.InferenceSlicer``: its callback maps one tile to a finished ``sv.Detections``, i.e. after the
thresholds. Our detector runs each prompt over batches of images and keeps every query's confidence until the end,
because the image's uncertainty (``uncertainty.threshold_margin``) is taken over ALL candidates, below threshold
included; the slicer's merge sees only kept boxes, and would run the prompts once per tile instead of once per batch
of tiles. So the tiles here are only extra "views" of the image that go through the detector's own batching: a
view is a crop and its offset. Tile placement follows the slicer's (``InferenceSlicer._generate_offset``, private):
full-size tiles, the last one of a row or column moved back to end at the border, so every tile of an image has the
same shape and they go through the model in batches (``Detector._pixel_batches`` never pads) of at most
``TILE_BATCH``.

Memory: every view's pixels are prepared before the first forward, as for the images of a call; a tile costs what
an image at the model's input size does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from model.config import DetectionSettings


TILE_BATCH = 8
"""Most tiles in one forward: a 1024 px image in 256 px tiles is 25 views, each resized to the model's input size;
one batch of all of them would hold the activations of 25 images at once (gigabytes for the released models)."""


@dataclass(frozen=True)
class View:
    """What the model sees of one image: the image itself, or a tile of it whose origin is at ``offset``."""

    image_index: int
    image: Image.Image
    offset: tuple[int, int] = (0, 0)
    is_tile: bool = False


def tile_windows(width: int, height: int, slice_size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of the tiles covering a ``width`` x ``height`` image; none when slicing is off or the
    image fits in one tile. A side shorter than a tile gets tiles as long as that side."""
    if not slice_size or (width <= slice_size and height <= slice_size):
        return []
    stride = max(1, slice_size - round(slice_size * overlap))

    def starts(length: int) -> list[int]:
        if length <= slice_size:
            return [0]
        last = length - slice_size
        positions = list(range(0, last, stride))
        return positions + [last] if not positions or positions[-1] != last else positions

    tile_w, tile_h = min(slice_size, width), min(slice_size, height)
    return [(x, y, x + tile_w, y + tile_h) for y in starts(height) for x in starts(width)]


def image_views(images, settings: DetectionSettings) -> list[View]:
    """Every image as a view, each followed by its tiles when ``settings.slice_size`` asks for them."""
    views = []
    for index, image in enumerate(images):
        views.append(View(index, image))
        for window in tile_windows(*image.size, settings.slice_size, settings.slice_overlap):
            views.append(View(index, image.crop(window), window[:2], is_tile=True))
    return views


def split_batches(groups: list[tuple[list[int], torch.Tensor]], size: int = TILE_BATCH):
    """``Detector._pixel_batches``' groups cut into batches of at most ``size`` views."""
    return [(indices[start:start + size], pixels[start:start + size])
            for indices, pixels in groups for start in range(0, len(indices), size)]
