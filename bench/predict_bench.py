"""End-to-end /predict against bare detect() on the same images, in one run; and cached retrieval.

1. The full-size architecture (GroundingDinoConfig(), random weights) at 512 px: N uncached tasks through the
   real server (`groundloop serve`, gunicorn, images fetched over HTTP from a local media server) against
   `Detector.detect()` on the same images, one at a time, the two taking turns call by call. Target ratio <= 1.05.
2. The small model: 100 tasks predicted once, then the same 100 retrieved again (answered from the store).
   Target: under 1 s.

Writes bench/results/predict.md.

    .venv/bin/python bench/predict_bench.py [--tasks 4]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' loopback helpers
from tests.support.media import media_server  # noqa: E402
from tests.support.net import free_port  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "predict.md"
TOKEN = "bench-token"
CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
          '<Label value="red square"/><Label value="blue circle" predicted_values="blue disc"/>'
          '<Label value="green triangle"/></RectangleLabels></View>')


@contextmanager
def groundloop_serve(data_dir: Path, model_dir: Path, media_url: str, image_size: int, *flags: str):
    """``groundloop serve`` (gunicorn, no worker) on a free port, ``flags`` added; yields its URL once healthy."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("groundloop")), "serve", "--no-worker", "--port", str(port),
               "--host", "127.0.0.1", "--data-dir", str(data_dir), "--model", str(model_dir), "--device", "cpu",
               "--image-size", str(image_size), "--label-studio-url", media_url, "--label-studio-api-key", TOKEN,
               "--predict-budget-seconds", "3000", "--log-level", "WARNING", *flags]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(url + "/health", timeout=1).ok:
                    break
            except requests.RequestException:  # not listening yet, or still loading the model
                time.sleep(0.5)
        else:
            raise RuntimeError("server did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def predict(url: str, urls: list[str], project: int = 1) -> tuple[float, dict]:
    """Seconds for one /predict of ``urls`` (one task each), and its answer; every task must get a prediction."""
    tasks = [{"id": i + 1, "data": {"image": u}} for i, u in enumerate(urls)]
    body = {"tasks": tasks, "project": f"{project}.1795301709", "label_config": CONFIG, "params": {"context": None}}
    started = time.perf_counter()
    response = requests.post(url + "/predict", json=body, timeout=3600)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    answer = response.json()
    assert len(answer["results"]) == len(urls) and all(answer["results"]), "every task must get a prediction"
    return elapsed, answer


def pngs(count: int, size: int, seed: int) -> dict[str, bytes]:
    """``count`` synthetic shape images of ``size`` px as PNG, by media path."""
    from model.synthetic import make_shapes_dataset

    out = {}
    for i, sample in enumerate(make_shapes_dataset(count, seed=seed, size=size)):
        buffer = io.BytesIO()
        sample.image.save(buffer, format="PNG")
        out[f"/data/upload/1/s{seed}-{i}.png"] = buffer.getvalue()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4, help="uncached tasks per /predict (full-size comparison)")
    parser.add_argument("--reps", type=int, default=8, help="/predict calls, each followed by detect() on its images")
    args = parser.parse_args()

    import torch
    import transformers
    from PIL import Image

    from active_learning.labelstudio.config import parse_label_config
    from model import DetectionSettings, Detector, build_full_size_model, build_small_model

    torch.set_num_threads(2)
    os.environ["HF_HUB_OFFLINE"] = "1"
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full = build_full_size_model(tmp / "full")
        small = build_small_model(tmp / "small")
        images = pngs(1 + args.reps * args.tasks, 512, seed=1)
        cached = pngs(100, 128, seed=2)
        classes = parse_label_config(CONFIG).controls[0].classes
        with media_server({**images, **cached}.get, TOKEN) as media:
            # 1. full size: server end to end vs detect() on the same images, interleaved so that drift in
            #    the machine's speed hits both alike; the first image warms up both.
            urls = list(images)
            batches = [urls[1 + r * args.tasks: 1 + (r + 1) * args.tasks] for r in range(args.reps)]
            detector = Detector.load(full, device="cpu")
            settings = DetectionSettings(image_size=512)
            pil = {u: Image.open(io.BytesIO(images[u])).convert("RGB") for u in urls}
            detector.detect([pil[urls[0]]], classes, settings)
            served, bare = [], []
            with groundloop_serve(tmp / "data-full", full, media, 512) as url:
                predict(url, urls[:1], project=9)
                for batch in batches:
                    served.append(predict(url, batch)[0])
                    started = time.perf_counter()
                    for u in batch:
                        detector.detect([pil[u]], classes, settings)
                    bare.append(time.perf_counter() - started)
            del detector

            # 2. small model: 100 tasks predicted, then retrieved again from the store
            with groundloop_serve(tmp / "data-small", small, media, 128) as url:
                first, _ = predict(url, list(cached))
                again = [predict(url, list(cached))[0] for _ in range(3)]

    ratio = sum(served) / sum(bare)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        "# /predict end to end",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {cpu}, 2 cores, no GPU; torch {torch.__version__}, transformers {transformers.__version__}",
        f"- command: `.venv/bin/python bench/predict_bench.py --tasks {args.tasks} --reps {args.reps}`",
        "- server: `groundloop serve` (gunicorn, 1 worker, SQLite), images over HTTP from a local media server "
        "with token auth, as from Label Studio; one warm-up request before timing",
        "",
        "| full-size architecture, 512 px, uncached | tasks per call | /predict (s) | bare detect() on the same "
        "images (s) | ratio |",
        "|---|---|---|---|---|",
        *(f"| call {i + 1} | {args.tasks} | {s:.2f} | {b:.2f} | {s / b:.3f} |" for i, (s, b) in
          enumerate(zip(served, bare))),
        f"| all | {args.tasks * args.reps} | {sum(served):.2f} | {sum(bare):.2f} | {ratio:.3f} |",
        "",
        "| small model, 128 px | tasks | first /predict (s) | repeated /predict, answered from the store (s) |",
        "|---|---|---|---|",
        f"| 100 tasks | 100 | {first:.2f} | {', '.join(f'{t:.3f}' for t in again)} |",
        "",
        f"Target: ratio <= 1.05 (measured {ratio:.3f} over all calls, median per call "
        f"{statistics.median(s / b for s, b in zip(served, bare)):.3f}); repeated retrieval of 100 predicted tasks "
        f"under 1 s (measured {min(again):.3f}-{max(again):.3f} s).",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
