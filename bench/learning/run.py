"""bench/learning: the small model through simulated labeling rounds (see active_learning/simulation.py).

Writes bench/learning/results.md (table of held-out mAP and correction effort per round, machine, date) and
bench/learning/rounds.png.

    .venv/bin/python bench/learning/run.py [--rounds 4] [--images-per-round 40]
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from active_learning.simulation import format_table, plot_rows, run_demo

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--images-per-round", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_demo(Path(tmp), rounds=args.rounds, images_per_round=args.images_per_round, seed=args.seed,
                        report=lambda row: print(f"round {row.round}: held-out mAP {row.heldout_map:.3f}, "
                                                 f"{row.corrections} corrections, {row.round_status}", flush=True))
    total = time.monotonic() - started
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    plot_rows(rows, HERE / "rounds.png")
    text = "\n".join([
        "# Learning across labeling rounds (simulated annotator, small model, synthetic shapes)",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total {total:.0f} s",
        f"- machine: {cpu}, 2 cores, no GPU; torch {torch.__version__}, transformers {transformers.__version__}",
        f"- command: `.venv/bin/python bench/learning/run.py --rounds {args.rounds} "
        f"--images-per-round {args.images_per_round} --seed {args.seed}`",
        "- each round: the deployed model pre-labels the next images, the simulated annotator corrects them to the "
        "truth (corrections = boxes moved, relabeled, deleted or added; IoU 0.5 pairing, 'unchanged' at IoU >= 0.9), "
        "the worker's schedule fires a training round on all labels so far, the candidate is promoted if its "
        "validation mAP beats the deployed model's; `heldout_map` is the deployed model's mAP@[.5:.95] on 40 fixed "
        "images never labeled in the loop",
        "",
        format_table(rows),
        "",
        "![rounds](rounds.png)",
        "",
    ])
    (HERE / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
