"""bench/learning: the small model through simulated labeling rounds (see active_learning/tools/demo.py).

Writes bench/learning/results-<date>.md (table of held-out mAP, correction effort and time saved per round,
machine, date) and rounds-<date>.png beside the earlier results, for comparison.

    .venv/bin/python bench/learning/run.py [--rounds 4] [--images-per-round 40]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from active_learning.tools.demo import format_table, plot_rows, results_markdown, run_demo

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
                        report=lambda row: print(format_table([row]).splitlines()[-1], flush=True))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    plot = f"rounds-{stamp}.png"
    plot_rows(rows, HERE / plot)
    command = (f".venv/bin/python bench/learning/run.py --rounds {args.rounds} "
               f"--images-per-round {args.images_per_round} --seed {args.seed}")
    text = results_markdown(rows, "Learning across labeling rounds (simulated annotator, small model, synthetic "
                            "shapes)", command, time.monotonic() - started, plot)
    (HERE / f"results-{stamp}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
