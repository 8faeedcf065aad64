"""Sliced inference (``DetectionSettings.slice_size``): the recall it buys on small objects in large images, and
what it costs.

Random weights cannot find anything, so the small model first learns the synthetic shapes (``model.synthetic``,
128 px images whose shapes are 21-42 px, the demo's settings: shortest edge 128, lr 1e-3, batches of 2, backbone
trained). It is then evaluated on LARGE images (``--size`` px, noisy grey like the training images) with
``--shapes`` SMALL shapes (``--min-side``..``--max-side`` px) drawn at random places, with slicing off and on
(``--slice`` px tiles, ``--overlap``), both at shortest edge ``--eval-edge``: off, the whole image shrinks to that
edge (a 32 px shape becomes 8 px); on, every tile is also seen at that edge, i.e. near the scale the model
learned. A third run, off at shortest edge ``--size`` (the whole image at full resolution, no slicing), shows
what a larger input alone buys. The runs take turns image by image (each image starts with the next mode), so
load from other processes hits them alike.

Per mode: recall at IoU 0.5 (a true box counts when a predicted box of its class overlaps it by 0.5 or more) at
the served box threshold 0.35 and over every candidate (score 0.01 and up), mAP@[.5:.95] and mAP@.5
(``model.evaluation``), and seconds per image of ``detect()`` (median).

    .venv/bin/python bench/slicing_bench.py --output bench/results/slicing.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import supervision as sv
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import Detector, TrainingConfig, build_small_model  # noqa: E402
from model.config import EVAL_SETTINGS  # noqa: E402
from model.evaluation import evaluate_detections  # noqa: E402
from model.synthetic import SHAPE_CLASSES, make_shapes_dataset, make_small_shapes_image  # noqa: E402
from model.training import TrainingExample, fit  # noqa: E402

SERVED_THRESHOLD = 0.35


def matched(truth: sv.Detections, predicted: sv.Detections, threshold: float) -> int:
    """True boxes with a predicted box of their class above ``threshold`` overlapping them by IoU >= 0.5."""
    predicted = predicted[predicted.confidence > threshold]
    if len(truth) == 0 or len(predicted) == 0:
        return 0
    iou = sv.box_iou_batch(truth.xyxy, predicted.xyxy)
    same_class = truth.class_id[:, None] == predicted.class_id[None, :]
    return int(((iou >= 0.5) & same_class).any(axis=1).sum())


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--images", type=int, default=16, help="large evaluation images")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--shapes", type=int, default=8)
    parser.add_argument("--min-side", type=int, default=24)
    parser.add_argument("--max-side", type=int, default=40)
    parser.add_argument("--slice", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--eval-edge", type=int, default=256)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    started, load_before = time.perf_counter(), load_average()
    torch.manual_seed(0)

    work = Path(tempfile.mkdtemp(prefix="slicing-bench-"))
    detector = Detector.load(build_small_model(work / "small", seed=0), device="cpu")
    train = [TrainingExample(s.image, s.targets) for s in make_shapes_dataset(args.train_images, seed=1)]
    validation = [TrainingExample(s.image, s.targets) for s in make_shapes_dataset(16, seed=2)]
    config = TrainingConfig(epochs=args.epochs, batch_size=2, learning_rate=1e-3, patience=args.epochs,
                            freeze_backbone=False, device="cpu")
    train_started = time.perf_counter()
    result = fit(detector, train, validation, SHAPE_CLASSES, work / "fit", config,
                 eval_settings=dataclasses.replace(EVAL_SETTINGS, image_size=128))
    train_seconds = time.perf_counter() - train_started
    detector = Detector.load(work / "fit" / "best", device="cpu")
    print(f"trained in {train_seconds:.0f} s, best validation mAP {result.best_map:.3f}", file=sys.stderr)

    rng = random.Random(3)
    images = [make_small_shapes_image(rng, args.size, args.shapes, args.min_side, args.max_side)
              for _ in range(args.images)]
    base = dataclasses.replace(EVAL_SETTINGS, image_size=args.eval_edge)
    modes = {
        f"off, edge {args.eval_edge}": base,
        f"on, edge {args.eval_edge}": dataclasses.replace(base, slice_size=args.slice, slice_overlap=args.overlap),
        f"off, edge {args.size}": dataclasses.replace(base, image_size=args.size),
    }
    for settings in modes.values():  # warm-up
        detector.detect([images[0].image], SHAPE_CLASSES, settings)
    predictions = {mode: [] for mode in modes}
    seconds = {mode: [] for mode in modes}
    for index, sample in enumerate(images):
        order = list(modes)[index % len(modes):] + list(modes)[:index % len(modes)]
        for mode in order:
            tick = time.perf_counter()
            (detections,) = detector.detect([sample.image], SHAPE_CLASSES, modes[mode])
            seconds[mode].append(time.perf_counter() - tick)
            predictions[mode].append(detections)
        print(f"image {index}: " + ", ".join(f"{m} {seconds[m][-1]:.2f} s" for m in modes), file=sys.stderr)

    truths = [s.targets for s in images]
    total = sum(len(t) for t in truths)
    names = [c.name for c in SHAPE_CLASSES]
    rows = []
    for mode in modes:
        metrics = evaluate_detections(truths, predictions[mode], [s.image.size for s in images], names)
        served = sum(matched(t, p, SERVED_THRESHOLD) for t, p in zip(truths, predictions[mode]))
        every = sum(matched(t, p, 0.0) for t, p in zip(truths, predictions[mode]))
        rows.append((mode, served / total, every / total, metrics.map, metrics.map50,
                     statistics.median(seconds[mode])))

    from model.slicing import tile_windows

    tiles = len(tile_windows(args.size, args.size, args.slice, args.overlap))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Sliced inference benchmark",
        "",
        f"- date: {now}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch threads: "
        f"{torch.get_num_threads()}; Python {platform.python_version()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}",
        "- command: `python bench/slicing_bench.py --output bench/results/slicing.md`",
        f"- model: the small test config fine-tuned on {args.train_images} synthetic 128 px shape images "
        f"({args.epochs} epochs, shortest edge 128, lr 1e-3, batch 2, backbone trained; {train_seconds:.0f} s; "
        f"best validation mAP {result.best_map:.3f} on 16 such images)",
        f"- evaluation: {args.images} images of {args.size}x{args.size} px, {args.shapes} shapes each of "
        f"{args.min_side}-{args.max_side} px ({total} true boxes), shortest edge {args.eval_edge} for every view; "
        f"slicing on: {args.slice} px tiles, overlap {args.overlap} ({tiles} tiles + the whole image per image); "
        "modes take turns image by image",
        f"- total run {time.perf_counter() - started:.0f} s; 1-minute load average {load_before} before, "
        f"{load_average()} after (2 cores, shared)",
        "",
        "| slicing, shortest edge | recall@0.5 (score > 0.35) | recall@0.5 (any score) | mAP@[.5:.95] | mAP@.5 | s/image (median) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {mode} | {served:.3f} | {every:.3f} | {m:.3f} | {m50:.3f} | {sec:.3f} |"
              for mode, served, every, m, m50, sec in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
