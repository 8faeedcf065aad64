"""Throughput of ``Detector.detect`` and its overhead over the bare model forward.

For each model (the full grounding-dino-tiny architecture with random weights, and the small test config),
shortest edge and batch size:

- images/s of ``detect()``;
- ``detect/forward``: its time over that of a bare ``model(...)`` call on the very tensors ``detect`` builds,
  timed alternately in the same run. Each is the best of ``--reps`` rounds after one warm-up: on a shared
  machine the fastest run is the least disturbed one;
- ``in-call``: the median over rounds of one ``detect()`` call's time over the time its own model forward
  took (measured by module hooks). Both come from the same seconds of the same call, so other processes'
  load hits them alike: on a shared machine this is the steadier measure of the overhead.

Random weights cost what real ones do.

    .venv/bin/python bench/detect_bench.py --output bench/results/detect.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from model import ClassSpec, DetectionSettings, Detector, build_full_size_model, build_prompts, build_small_model

CLASSES = [ClassSpec(name) for name in ("person", "car", "traffic light", "dog", "bicycle")]
IMAGE_WH = (640, 480)


class ForwardTimer:
    """Adds up the time spent in ``model.forward``, through module hooks."""

    def __init__(self, model: torch.nn.Module):
        self.seconds = 0.0
        self._started = 0.0
        model.register_forward_pre_hook(self._start)
        model.register_forward_hook(self._stop)

    def _start(self, module, args):
        self._started = time.perf_counter()

    def _stop(self, module, args, output):
        self.seconds += time.perf_counter() - self._started


def bare_forward(detector: Detector, images: list[Image.Image], settings: DetectionSettings):
    """The model's forward on exactly the tensors detect() gives it, prepared outside the timing."""
    ((_, pixel_values),) = detector._pixel_batches(images, settings.image_size)
    (prompt,) = build_prompts(CLASSES, detector.processor.tokenizer, detector.model.config.max_text_len)
    input_ids = torch.tensor([prompt.input_ids] * len(images))
    inputs = dict(
        pixel_values=pixel_values,
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        token_type_ids=torch.zeros_like(input_ids),
    )

    def forward():
        with torch.inference_mode():
            detector.model(**inputs)

    return forward


def measure(detector: Detector, timer: ForwardTimer, images: list[Image.Image], settings: DetectionSettings,
            reps: int) -> tuple[float, float, float]:
    """Best detect() seconds, best bare-forward seconds, median in-call ratio; after one warm-up of each."""
    def detect():
        detector.detect(images, CLASSES, settings)

    forward = bare_forward(detector, images, settings)
    detect()
    forward()
    detect_times, forward_times, in_call_ratios = [], [], []
    for _ in range(reps):
        timer.seconds = 0.0
        started = time.perf_counter()
        detect()
        detect_times.append(time.perf_counter() - started)
        in_call_ratios.append(detect_times[-1] / timer.seconds)
        started = time.perf_counter()
        forward()
        forward_times.append(time.perf_counter() - started)
    return min(detect_times), min(forward_times), statistics.median(in_call_ratios)


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["full", "small"], choices=["full", "small"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 800])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--reps", type=int, default=2, help="timed rounds after one warm-up (full-size model)")
    parser.add_argument("--small-reps", type=int, default=5, help="timed rounds for the small model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (IMAGE_WH[1], IMAGE_WH[0], 3), dtype=np.uint8))
        for _ in range(max(args.batches))
    ]
    builders = {"full": build_full_size_model, "small": build_small_model}
    rows = []
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            detector = Detector.load(builders[name](Path(workdir) / name), device="cpu")
            timer = ForwardTimer(detector.model)
            reps = args.reps if name == "full" else args.small_reps
            for size in args.sizes:
                for batch in args.batches:
                    detect_s, forward_s, in_call = measure(
                        detector, timer, images[:batch], DetectionSettings(image_size=size), reps
                    )
                    row = (name, size, batch, batch / detect_s, detect_s / batch, forward_s / batch,
                           detect_s / forward_s, in_call, os.getloadavg()[0])
                    rows.append(row)
                    print("%-5s %4d px  batch %d: %7.2f img/s  detect %.3f s/img  forward %.3f s/img  "
                          "ratio %.3f  in-call %.3f  load %.1f" % row, flush=True)
            del detector

    table = [
        "| model | shortest edge | batch | detect() images/s | detect() s/image | forward s/image "
        "| detect/forward | in-call | load after |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {m} | {s} | {b} | {ips:.2f} | {d:.3f} | {f:.3f} | {r:.3f} | {c:.3f} | {load:.1f} |"
          for m, s, b, ips, d, f, r, c, load in rows),
    ]
    report = "\n".join([
        "# detect() benchmark",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; torch threads: {args.threads}; Python {platform.python_version()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- images: {IMAGE_WH[0]}x{IMAGE_WH[1]} noise, {len(CLASSES)} classes (one prompt); random weights; "
        f"{args.reps} (full) / {args.small_reps} (small) timed rounds after one warm-up; "
        f"total run {time.perf_counter() - started:.0f} s",
        f"- the machine is shared with other engineers' test runs: 1-minute load average "
        f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores; this run alone adds about 2)",
        "- detect/forward: best detect() over best bare forward (separate calls); in-call: median of detect() "
        "over the forward inside that same call (see the script's docstring)",
        "",
        *table,
        "",
    ])
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)


if __name__ == "__main__":
    main()
