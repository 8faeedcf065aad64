"""Cost of the crop classifier: ``CropEncoder.encode`` per box, and ``train_head`` on a few hundred crops.

- ``encode``: the facebook/dinov2-small architecture (random weights, 224 px crops) on one 640x480 noise image
  with 1 and 64 random boxes of 40-320 px; the per-box cost is the 64-box call's time over 64 (64 crops are two
  batches of ``CROPS_PER_BATCH``);
- ``train_head``: 200 crops (dim 768) of synthetic "red team" / "blue team" squares encoded by that model, two
  labels; the first call (which imports scikit-learn) is reported apart from the median of the others;
- the same for the tiny test encoder (``build_small_crop_encoder``), for reference.

Each time is the median of ``--reps`` rounds after one warm-up, the best beside it. torch keeps its default
thread count. Random weights cost what real ones do: the hub is unreachable here, so the models are built locally.

    .venv/bin/python bench/classifier_bench.py --output bench/results/classifier.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from model.classifier import CROPS_PER_BATCH, CropEncoder, accuracy, train_head
from model.factory import build_dinov2_small_architecture, build_small_crop_encoder

IMAGE_WH = (640, 480)
BOX_COUNTS = (1, 64)
TRAIN_CROPS = 200
TEAM_COLOURS = ((210, 40, 40), (40, 40, 210))


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return f"{platform.machine()}, {names[0] if names else '?'}, {os.cpu_count()} cores"


def random_boxes(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` boxes of 40 to 320 px per side, inside the image."""
    width, height = IMAGE_WH
    sides = rng.uniform(40, 320, (count, 2))
    corners = rng.uniform(0, 1, (count, 2)) * (np.array([width, height]) - sides)
    return np.concatenate([corners, corners + sides], axis=1).astype(np.float32)


def team_crops(count: int, seed: int) -> list[tuple[Image.Image, np.ndarray, int]]:
    """``count`` (image, box, team) crops: a 128 px noise image with one 24-48 px square, red or blue."""
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        team = index % 2
        side = int(rng.integers(24, 49))
        x0, y0 = (int(value) for value in rng.integers(0, 128 - side, 2))
        pixels = rng.integers(0, 256, (128, 128, 3))
        pixels[y0:y0 + side, x0:x0 + side] = np.array(TEAM_COLOURS[team]) + rng.integers(-30, 31, 3)
        box = np.array([[x0, y0, x0 + side, y0 + side]], dtype=np.float32)
        items.append((Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), box, team))
    return items


def timed(task, reps: int) -> tuple[list[float], float]:
    """(times of ``reps`` rounds, time of the warm-up round before them)."""
    times = []
    for rep in range(reps + 1):
        began = time.perf_counter()
        task()
        elapsed = time.perf_counter() - began
        if rep:
            times.append(elapsed)
        else:
            warm_up = elapsed
    return times, warm_up


def measure(name: str, encoder: CropEncoder, reps: int, train_reps: int) -> dict:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (IMAGE_WH[1], IMAGE_WH[0], 3), dtype=np.uint8))
    result = {"name": name, "dim": encoder.dim,
              "parameters": sum(p.numel() for p in encoder.model.parameters()),
              "crop": encoder.processor.crop_size["height"]}
    for count in BOX_COUNTS:
        boxes = random_boxes(count, rng)
        times, _ = timed(lambda: encoder.encode(image, boxes), reps)
        result[f"encode {count}"] = times
        print(f"{name}: encode {count:>3} boxes median {statistics.median(times):.3f} s", flush=True)

    train, held_out = team_crops(TRAIN_CROPS, seed=1), team_crops(100, seed=2)
    began = time.perf_counter()
    features = np.concatenate([encoder.encode(image, box) for image, box, _ in train])
    result["encode one at a time"] = (time.perf_counter() - began) / len(train)
    targets = [team for *_, team in train]
    val_features = np.concatenate([encoder.encode(image, box) for image, box, _ in held_out])
    times, first = timed(lambda: train_head("square", ("red team", "blue team"), features, targets), train_reps)
    result["train"], result["train first"] = times, first
    head = train_head("square", ("red team", "blue team"), features, targets)
    result["val accuracy"] = accuracy(head, val_features, [team for *_, team in held_out])
    print(f"{name}: train_head median {statistics.median(times):.3f} s (first {first:.3f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed encode rounds after one warm-up")
    parser.add_argument("--train-reps", type=int, default=10, help="timed train_head rounds after the first")
    parser.add_argument("--output", type=Path, help="write the markdown report here")
    args = parser.parse_args()

    load_before = os.getloadavg()
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, build in (("dinov2-small architecture", build_dinov2_small_architecture),
                            ("tiny test encoder", build_small_crop_encoder)):
            encoder = CropEncoder.load(build(Path(workdir) / name.replace(" ", "-")), device="cpu")
            results.append(measure(name, encoder, args.reps, args.train_reps))
    load_after = os.getloadavg()

    med = statistics.median
    rows = [
        "| encoder | params | crop px | dim | encode 1 box, median (best) s | encode 64 boxes, median (best) s | "
        "per box in a 64-box call, ms | per box, one box per call, ms | train_head 200 crops, median (best) s | "
        "first train_head (imports sklearn) s | held-out accuracy (100 crops) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        one, many = result["encode 1"], result[f"encode {BOX_COUNTS[-1]}"]
        rows.append(
            f"| {result['name']} | {result['parameters'] / 1e6:.2f} M | {result['crop']} | {result['dim']} | "
            f"{med(one):.3f} ({min(one):.3f}) | {med(many):.3f} ({min(many):.3f}) | "
            f"{1000 * med(many) / BOX_COUNTS[-1]:.1f} | {1000 * result['encode one at a time']:.1f} | "
            f"{med(result['train']):.3f} ({min(result['train']):.3f}) | {result['train first']:.3f} | "
            f"{result['val accuracy']:.2f} |"
        )
    report = "\n".join([
        "# Crop classifier benchmark (CropEncoder.encode, train_head)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; torch threads: {torch.get_num_threads()} (default); "
        f"Python {platform.python_version()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- encode: one {IMAGE_WH[0]}x{IMAGE_WH[1]} noise image, random boxes of 40-320 px, {args.reps} timed "
        f"rounds after one warm-up; {CROPS_PER_BATCH} crops per forward",
        f"- train_head: {TRAIN_CROPS} crops (one red or blue square on 128 px noise each, half of each team) "
        f"encoded by the same model, 2 labels; {args.train_reps} timed rounds after the first; held-out accuracy "
        "on 100 other crops (random weights: it says the features keep colour, nothing about real DINOv2)",
        f"- total run {time.perf_counter() - started:.0f} s; 1-minute load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (the machine is shared with other engineers' test runs)",
        "",
        *rows,
        "",
    ])
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)


if __name__ == "__main__":
    main()
