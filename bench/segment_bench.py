"""Cost of ``Segmenter.segment_boxes`` (SAM ViT-B) per image and per box, beside ``Detector.detect``.

On one 640x480 image, interleaved in each round (so that other processes' load hits all alike):

- ``detect()`` of the full grounding-dino-tiny architecture at shortest edge 512 (what Grounded SAM runs first);
- ``segment_boxes`` of the facebook/sam-vit-base architecture with 1, 8 and 32 boxes. Its image embedding (one
  vision-encoder pass per image, timed by module hooks inside the same calls) is reported apart, and the cost of
  an extra box is the slope between 1 and 32 boxes.

Each time is the best of ``--reps`` rounds after one warm-up (on a shared machine the fastest run is the least
disturbed one); medians are given beside. Random weights cost what real ones do: the hub is unreachable here, so
both models are built locally (``build_sam_base_segmenter``, ``build_full_size_model``).

    .venv/bin/python bench/segment_bench.py --output bench/results/segment.md
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

from detect_bench import CLASSES, ForwardTimer, machine  # bench/ is on sys.path when run as a script
from model import DetectionSettings, Detector, Segmenter, build_full_size_model, build_sam_base_segmenter

IMAGE_WH = (640, 480)
BOX_COUNTS = (1, 8, 32)


def random_boxes(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` boxes of 40 to 320 px per side, inside the image."""
    width, height = IMAGE_WH
    sides = rng.uniform(40, 320, (count, 2))
    corners = rng.uniform(0, 1, (count, 2)) * (np.array([width, height]) - sides)
    return np.concatenate([corners, corners + sides], axis=1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed rounds after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (IMAGE_WH[1], IMAGE_WH[0], 3), dtype=np.uint8))
    boxes = {count: random_boxes(count, rng) for count in BOX_COUNTS}
    settings = DetectionSettings(image_size=512)
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        segmenter = Segmenter.load(build_sam_base_segmenter(Path(workdir) / "sam"), device="cpu")
        detector = Detector.load(build_full_size_model(Path(workdir) / "gdino"), device="cpu")
    parameters = sum(p.numel() for p in segmenter.model.parameters())
    encoder = ForwardTimer(segmenter.model.vision_encoder)

    tasks = {"detect": lambda: detector.detect([image], CLASSES, settings)}
    for count in BOX_COUNTS:
        tasks[f"segment {count}"] = lambda count=count: segmenter.segment_boxes(image, boxes[count])
    times: dict[str, list[float]] = {name: [] for name in tasks}
    besides: dict[str, list[float]] = {name: [] for name in tasks}  # a call's time less its own embedding
    embeddings: list[float] = []
    for rep in range(args.reps + 1):  # round 0 is the warm-up
        for name, task in tasks.items():
            encoder.seconds = 0.0
            began = time.perf_counter()
            task()
            elapsed = time.perf_counter() - began
            if rep:
                times[name].append(elapsed)
                if name != "detect":
                    embeddings.append(encoder.seconds)
                    besides[name].append(elapsed - encoder.seconds)
            print(f"round {rep} {name:<11} {elapsed:6.2f} s  load {os.getloadavg()[0]:.1f}", flush=True)
    load_after = os.getloadavg()

    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    embedding = min(embeddings)
    # The embedding's own jitter (seconds, on a shared machine) would swamp the boxes' cost (milliseconds): the
    # slope is taken on each call's time less the embedding measured inside that same call.
    rest = {name: statistics.median(values) for name, values in besides.items() if values}
    first, last = f"segment {BOX_COUNTS[0]}", f"segment {BOX_COUNTS[-1]}"
    per_box = (rest[last] - rest[first]) / (BOX_COUNTS[-1] - BOX_COUNTS[0])
    rows = [
        "| call | best s | median s | over detect() (best) | median s besides the embedding |",
        "|---|---|---|---|---|",
        f"| detect(), grounding-dino-tiny, 512 px | {best['detect']:.3f} | {median['detect']:.3f} | 1.00 | |",
        *(f"| segment_boxes, {count} box{'es' if count > 1 else ''} | {best[f'segment {count}']:.3f} | "
          f"{median[f'segment {count}']:.3f} | {best[f'segment {count}'] / best['detect']:.2f} | "
          f"{rest[f'segment {count}']:.3f} |"
          for count in BOX_COUNTS),
        f"| the image embedding alone (vision encoder, once per call) | {embedding:.3f} | "
        f"{statistics.median(embeddings):.3f} | {embedding / best['detect']:.2f} | |",
        f"| each extra box (slope of the last column, {BOX_COUNTS[0]} to {BOX_COUNTS[-1]} boxes) | | "
        f"{per_box:.4f} | {per_box / best['detect']:.4f} | |",
    ]
    report = "\n".join([
        "# segment_boxes() benchmark (Grounded SAM's second stage)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; torch threads: {args.threads}; Python {platform.python_version()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- segmenter: facebook/sam-vit-base architecture ({parameters / 1e6:.0f} M parameters, 1024 px input), "
        f"random weights; detector: grounding-dino-tiny architecture, random weights, {len(CLASSES)} classes "
        "(one prompt)",
        f"- image: {IMAGE_WH[0]}x{IMAGE_WH[1]} noise; random boxes of 40-320 px; {args.reps} timed rounds after one "
        f"warm-up, the four calls interleaved in each round; total run {time.perf_counter() - started:.0f} s",
        f"- the machine is shared with other engineers' test runs: 1-minute load average {load_before[0]:.1f} "
        f"before, {load_after[0]:.1f} after (2 cores; this run alone adds about 2)",
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
