"""Memory per image: ``Detector`` reduces each image to the model's input size before the processor sees it.

- The pixels, and so the detections, are those of the processor fed the full image (the reduction uses the
  processor's own size rule and resampling filter, and skips the processor's resize).
- A 10000x8000 JPEG, decoded as the server decodes it and detected at ``image_size`` 800, takes the process's peak
  RSS at most ``PEAK_GROWTH_BOUND`` above its RSS before the image (model loaded, one 1000x800 image already
  detected at 800 px, so what remains is what depends on the source's pixel count). Figures, before and after:
  bench/results/image_memory.md (bench/image_memory_bench.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import DetectionSettings
from model.detector import _LONGEST_TO_SHORTEST, model_input_size
from model.prompts import ClassSpec

REPO = Path(__file__).resolve().parents[2]
PEAK_GROWTH_BOUND = 600_000_000
"""0.6 GB (10^9 bytes): the decoded 10000x8000 RGB image is 240 MB of it."""

CLASSES = [ClassSpec("cat"), ClassSpec("dog")]


def _noise(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def old_pixel_batches(detector, images, image_size):
    """The code before the reduction: the processor gets the full RGB image and resizes it itself (also the
    'before' of bench/image_memory_bench.py)."""
    size = {}
    if image_size:
        size = {"size": {"shortest_edge": image_size, "longest_edge": round(image_size * _LONGEST_TO_SHORTEST)}}
    groups = {}
    for index, image in enumerate(images):
        pixel_values = detector.processor.image_processor(images=image.convert("RGB"), return_tensors="pt",
                                                          **size)["pixel_values"]
        indices, tensors = groups.setdefault(tuple(pixel_values.shape[-2:]), ([], []))
        indices.append(index)
        tensors.append(pixel_values)
    return [(indices, torch.cat(tensors)) for indices, tensors in groups.values()]


@pytest.mark.parametrize("image_size", [0, 128, 200])
def test_same_pixels_as_the_processor_on_the_full_image(detector, image_size):
    images = [_noise((640, 480), "RGB", 1), _noise((1001, 333), "L", 2), _noise((300, 900), "RGBA", 3),
              _noise((97, 61), "P", 4), _noise((640, 480), "RGB", 5)]
    new = detector._pixel_batches(images, image_size)
    old = old_pixel_batches(detector, images, image_size)
    assert [indices for indices, _ in new] == [indices for indices, _ in old]
    for (_, new_pixels), (_, old_pixels) in zip(new, old):
        assert new_pixels.shape == old_pixels.shape
        assert float((new_pixels - old_pixels).abs().max()) <= 1e-6


def test_same_detections_as_the_processor_on_the_full_image(detector, monkeypatch):
    images = [_noise((640, 480), "RGB", 11), _noise((500, 900), "RGB", 12), _noise((333, 1001), "L", 13)]
    settings = DetectionSettings(image_size=128, box_threshold=0.0, text_threshold=0.0)
    new = detector.detect(images, CLASSES, settings)
    with monkeypatch.context() as patch:
        patch.setattr(type(detector), "_pixel_batches", old_pixel_batches)
        old = detector.detect(images, CLASSES, settings)
    assert sum(len(found) for found in new) > 0
    for image, found, expected in zip(images, new, old):
        assert len(found) == len(expected)
        np.testing.assert_array_equal(found.class_id, expected.class_id)
        np.testing.assert_allclose(found.xyxy, expected.xyxy, atol=1e-3 * max(image.size))
        np.testing.assert_allclose(found.confidence, expected.confidence, atol=1e-4)


def test_model_input_size_is_the_processors_rule(detector):
    default = detector.processor.image_processor.size
    assert model_input_size(8000, 10000, 800, default) == (800, 1000)
    assert model_input_size(1000, 8000, 800, default) == (167, 1333)  # longest edge capped at 800 * 1333 / 800
    assert model_input_size(480, 640, 0, default) == model_input_size(480, 640, default["shortest_edge"], default)


CHILD = r"""
import json, sys, threading, time
from PIL import Image
from active_learning.images.fetcher import decode
from model import Detector
from model.config import DetectionSettings
from model.prompts import ClassSpec


def anonymous_rss():
    # the process's own memory, without file-backed pages (libtorch, mmapped weights) the kernel may drop and
    # fault back in when other processes press on memory: those would count as growth in VmRSS
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("RssAnon:"))


model_dir, jpeg_path = sys.argv[1:3]
detector = Detector.load(model_dir, device="cpu")
settings = DetectionSettings(image_size=800)
classes = [ClassSpec("cat"), ClassSpec("dog")]
detector.detect([Image.new("RGB", (1000, 800), (90, 120, 150))], classes, settings)  # warm-up at the model size
data = open(jpeg_path, "rb").read()
current = anonymous_rss()
peak, done = [current], threading.Event()


def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anonymous_rss())
        time.sleep(0.002)


sampler = threading.Thread(target=sample)
sampler.start()
fetched = decode("big.jpg", data, 10000 * 8000)
[found] = detector.detect([fetched.image], classes, settings)
done.set()
sampler.join()
print(json.dumps({"current": current, "peak": max(peak[0], anonymous_rss()), "size": list(fetched.image.size),
                  "boxes": len(found)}))
"""


def write_big_jpeg(path: Path, size: tuple[int, int] = (10000, 8000)) -> Path:
    """A ``size`` JPEG with gradients and coarse noise (a few MB, not a compressed-away flat colour)."""
    width, height = size
    red = Image.linear_gradient("L").resize(size)
    green = Image.effect_noise((width // 8, height // 8), 60).resize(size, Image.Resampling.BILINEAR)
    blue = red.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    Image.merge("RGB", (red, green, blue)).save(path, "JPEG", quality=85)
    return path


@pytest.mark.slow  # about 20 s: a 10000x8000 JPEG written, decoded and detected in a fresh process
def test_a_10000x8000_jpeg_stays_under_the_memory_bound(small_model_dir, tmp_path):
    jpeg = write_big_jpeg(tmp_path / "big.jpg")
    result = subprocess.run([sys.executable, "-c", CHILD, str(small_model_dir), str(jpeg)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["size"] == [10000, 8000]  # the caller still sees the full image
    # From the memory just before the image (not from the earlier high-water mark, which the warm-up forward set),
    # sampled every 2 ms while the image is decoded and detected:
    growth = figures["peak"] - figures["current"]
    assert growth <= PEAK_GROWTH_BOUND, f"peak memory is {growth / 1e6:.0f} MB above the memory before the image"
