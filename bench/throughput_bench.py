"""Images per second through /predict: one image at a time (before) against images fetched ahead of the model
and detected in batches (after), with bare detect() on the same images as the floor.

Each server is a real ``groundloop serve`` (gunicorn, 1 worker, SQLite) fetching the tasks' images over HTTP from
a local media server that wants the API token, as from Label Studio. Settings compared:

- ``before``: ``--prefetch-images 0 --predict-batch-size 1``: fetch, decode, detect, then the next image (what
  /predict did before issue 16);
- ``after``: the defaults, ``--prefetch-images 2 --predict-batch-size 1``: the next images download and decode
  while the model works;
- ``batch 4``: ``--prefetch-images 2 --predict-batch-size 4``: same-shape images share one forward pass.

Models: the small offline model at 128 px, with the media answering at once and after ``--latency-ms`` (a remote
storage); the full-size architecture (GroundingDinoConfig(), random weights) at 512 px with the media answering at
once. Every /predict asks for ``--tasks`` images not predicted before (a new query string per call), so nothing
comes from the store. Servers and bare detect() (one image at a time, decoded beforehand) take turns in one run,
``--reps`` rounds, so drift in the machine's speed hits all alike.

    .venv/bin/python bench/throughput_bench.py [--tasks 32 --reps 2 --latency-ms 100]

Writes bench/results/throughput.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' loopback helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_bench import CONFIG, TOKEN, groundloop_serve, pngs, predict  # noqa: E402
from tests.support.media import media_server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "throughput.md"
SETTINGS = {
    "before": ("--prefetch-images", "0", "--predict-batch-size", "1"),
    "after": ("--prefetch-images", "2", "--predict-batch-size", "1"),
    "batch 4": ("--prefetch-images", "2", "--predict-batch-size", "4"),
}


def run(model_dir: Path, image_size: int, images: dict[str, bytes], latency: float, reps: int,
        work_dir: Path) -> dict[str, list[float]]:
    """Seconds per /predict of all ``images`` for each setting, and for bare detect(), ``reps`` rounds each."""
    from PIL import Image

    from active_learning.labelstudio.config import parse_label_config
    from model import DetectionSettings, Detector

    def lookup(path: str) -> bytes | None:
        time.sleep(latency)
        return images.get(path.split("?", 1)[0])

    classes = parse_label_config(CONFIG).controls[0].classes
    detector = Detector.load(model_dir, device="cpu")
    detection = DetectionSettings(image_size=image_size)
    decoded = [Image.open(io.BytesIO(data)).convert("RGB") for data in images.values()]
    times: dict[str, list[float]] = {name: [] for name in [*SETTINGS, "bare detect()"]}
    with media_server(lookup, TOKEN) as media, ExitStack() as servers:
        urls = {name: servers.enter_context(groundloop_serve(work_dir / f"data-{n}", model_dir, media, image_size,
                                                             *flags))
                for n, (name, flags) in enumerate(SETTINGS.items())}
        for name, url in urls.items():  # warm-up: the first forward pays for allocations
            predict(url, [f"{next(iter(images))}?warm-up"])
        detector.detect(decoded[:1], classes, detection)
        for rep in range(reps):
            for name, url in urls.items():
                elapsed, _ = predict(url, [f"{path}?rep={rep}" for path in images])
                times[name].append(elapsed)
                print(f"{model_dir.name} rep {rep + 1}: {name} {elapsed:.2f} s", flush=True)
            started = time.perf_counter()
            for image in decoded:
                detector.detect([image], classes, detection)
            times["bare detect()"].append(time.perf_counter() - started)
            print(f"{model_dir.name} rep {rep + 1}: bare detect() {times['bare detect()'][-1]:.2f} s", flush=True)
    return times


def table(title: str, times: dict[str, list[float]], tasks: int) -> list[str]:
    """images/s (median over rounds), speed-up over ``before`` and e2e/detect, per setting."""
    median = {name: statistics.median(values) for name, values in times.items()}
    bare = median["bare detect()"]
    rows = [f"| {title} | images/s | seconds per {tasks} tasks (each round) | speed-up over before | "
            "/predict / bare detect() |", "|---|---|---|---|---|"]
    for name, seconds in median.items():
        rounds = ", ".join(f"{value:.2f}" for value in times[name])
        rows.append(f"| {name} | {tasks / seconds:.2f} | {rounds} | {median['before'] / seconds:.3f} | "
                    f"{seconds / bare:.3f} |")
    return rows + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32, help="images per /predict")
    parser.add_argument("--reps", type=int, default=2, help="rounds (each setting, then bare detect())")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="media delay for the small model's 2nd run")
    parser.add_argument("--skip-full-size", action="store_true")
    args = parser.parse_args()

    import torch
    import transformers

    from model import build_full_size_model, build_small_model

    torch.set_num_threads(2)
    os.environ["HF_HUB_OFFLINE"] = "1"
    started = datetime.now(timezone.utc)
    images = pngs(args.tasks, 512, seed=1)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = build_small_model(tmp / "small")
        runs = [("small model, 128 px, media at once", small, 128, 0.0),
                (f"small model, 128 px, media after {args.latency_ms:.0f} ms", small, 128, args.latency_ms / 1000)]
        if not args.skip_full_size:
            runs.append(("full-size architecture, 512 px, media at once", build_full_size_model(tmp / "full"), 512,
                         0.0))
        for n, (title, model_dir, size, latency) in enumerate(runs):
            lines += table(title, run(model_dir, size, images, latency, args.reps, tmp / f"run-{n}"), args.tasks)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    header = [
        "# /predict throughput: images fetched ahead of the model and batched",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {cpu}, {os.cpu_count()} cores, no GPU; torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- command: `.venv/bin/python bench/throughput_bench.py --tasks {args.tasks} --reps {args.reps} "
        f"--latency-ms {args.latency_ms:.0f}`",
        f"- {args.tasks} PNG tasks of 512x512 per /predict, none predicted before; each server is `groundloop serve` "
        "(gunicorn, 1 worker), images over HTTP with token auth; settings and bare detect() take turns, "
        f"{args.reps} rounds; images/s from the median round",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(header + lines))
    print("\n".join(header + lines))


if __name__ == "__main__":
    main()
