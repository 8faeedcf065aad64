"""Training step time and peak memory of the full-size Grounding DINO at 512 px, frozen vs unfrozen, on CPU.

Each configuration runs in its own process so its peak RSS is its own. Random weights: speed and memory do
not depend on weight values. Writes a Markdown table to bench/results/train_step.md.

    .venv/bin/python bench/train_step_bench.py [--steps 3] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "train_step.md"


def one_config(frozen: bool, steps: int, size: int) -> dict:
    import random

    import torch

    from model import Detector, build_full_size_model
    from model.synthetic import SHAPE_CLASSES, make_shapes_dataset
    from model.training import TrainingExample, encode_batch, freeze, make_batches
    from model.prompts import build_prompts

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        detector = Detector.load(build_full_size_model(Path(tmp) / "full"), device="cpu")
    model, processor = detector.model, detector.processor
    trainable = freeze(model, backbone=frozen, text_encoder=frozen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    prompt = build_prompts(SHAPE_CLASSES, processor.tokenizer, model.config.max_text_len)
    examples = [TrainingExample(s.image, s.targets) for s in make_shapes_dataset(steps + 1, seed=0, size=size)]
    batches = make_batches(examples, prompt, batch_size=1, rng=random.Random(0))
    model.train()
    times = []
    for batch in batches:
        inputs = encode_batch(batch, processor, size, torch.device("cpu"))
        started = time.perf_counter()
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        times.append(time.perf_counter() - started)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"frozen": frozen, "trainable": trainable, "step_seconds": times[1:], "peak_rss_gib": peak_gib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after 1 warm-up)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--child", choices=["frozen", "unfrozen"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_config(args.child == "frozen", args.steps, args.size)))
        return

    rows = []
    for mode in ("frozen", "unfrozen"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(args.steps),
                              "--size", str(args.size)], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(result)
        print(mode, result, flush=True)

    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        "# Training step: full-size Grounding DINO, CPU",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {cpu}, 2 cores, torch threads 2; torch {torch.__version__}, transformers {transformers.__version__}",
        f"- command: `.venv/bin/python bench/train_step_bench.py --steps {args.steps} --size {args.size}`",
        f"- one step = forward + loss + backward + grad clip + AdamW, batch 1, {args.size}x{args.size} px, "
        "prompt of 3 classes; GroundingDinoConfig() (Swin-T + BERT-base, 172 M weights), random weights",
        "",
        "| image backbone + text encoder | trainable weights | step time (s), each timed step | mean (s) | peak RSS (GiB) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        steps = ", ".join(f"{t:.2f}" for t in row["step_seconds"])
        mean = sum(row["step_seconds"]) / len(row["step_seconds"])
        lines.append(f"| {'frozen' if row['frozen'] else 'trained'} | {row['trainable'] / 1e6:.1f} M | {steps} "
                     f"| {mean:.2f} | {row['peak_rss_gib']:.1f} |")
    frozen, unfrozen = (sum(r["step_seconds"]) / len(r["step_seconds"]) for r in rows)
    lines += ["", f"Frozen steps take {frozen / unfrozen:.2f}x the time of unfrozen ones (same run)."]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
