"""bench/first_run: how long `groundloop serve` takes to stop, with its one line, for a model that cannot load.

Each case runs `groundloop serve` as a user would (a fresh process; its own empty Hugging Face cache, the tests'
HF_HUB_OFFLINE not passed on) and records the seconds until it exits, the exit code and the number of stderr
lines. The default hub id is asked of the real hub: on a machine without a route to it this is the air-gapped
first run. Writes bench/results/first_run.md.

    .venv/bin/python bench/first_run_bench.py [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "first_run.md"


def serve_until_exit(model: str, home: Path) -> tuple[float, int, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(home / "hf-home"), HF_HUB_CACHE=str(home / "hf-cache"))
    command = [str(Path(sys.executable).with_name("groundloop")), "serve", "--model", model,
               "--data-dir", str(home / "data"), "--port", "0"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    return time.monotonic() - started, done.returncode, len(done.stderr.strip().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "no-config").mkdir()
        cases = {
            "default hub id `IDEA-Research/grounding-dino-tiny` (this machine: no route to the hub)":
                "IDEA-Research/grounding-dino-tiny",
            "a directory that does not exist": str(tmp / "missing"),
            "a directory without config.json": str(tmp / "no-config"),
        }
        rows = []
        for label, model in cases.items():
            runs = [serve_until_exit(model, tmp / f"home-{i}") for i in range(args.reps)]
            seconds = [r[0] for r in runs]
            rows.append(f"| {label} | {statistics.median(seconds):.2f} | {max(seconds):.2f} | "
                        f"{sorted({r[1] for r in runs})} | {sorted({r[2] for r in runs})} |")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    text = "\n".join([
        "# First run: how fast `groundloop serve` stops for a model that cannot load",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu}, {os.cpu_count()} cores, no GPU",
        f"- command: `.venv/bin/python bench/first_run_bench.py --reps {args.reps}`",
        "- before this change (measured by hand, 2026-12-03): the default hub id without a route to the hub took 33 s,"
        " printed two tracebacks and ended with gunicorn's \"Worker failed to boot\" (exit 3)",
        "",
        "| model | median s | max s | exit codes | stderr lines |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
