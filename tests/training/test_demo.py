"""``groundloop demo`` end to end, as a user runs it (a subprocess), on a small setting: the table per round, the
plot, results.md, and the deployed model better on the held-out images than the starting model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from active_learning.tools.demo import TABLE_COLUMNS

pytestmark = pytest.mark.slow


def test_demo_prints_a_table_per_round_writes_the_plot_and_the_model_improves(tmp_path: Path):
    out = tmp_path / "demo"
    command = [str(Path(sys.executable).parent / "groundloop"), "demo", "--rounds", "2", "--images-per-round", "24",
               "--out", str(out)]  # about a minute on 2 quiet cores
    done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]

    lines = done.stdout.splitlines()
    header = "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert header in lines
    rows = [dict(zip(TABLE_COLUMNS, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines if line.startswith("| ") and line != header]
    assert [row["round"] for row in rows] == ["0", "1", "2"]
    assert rows[0]["round_status"] == "start"
    assert all(row["round_status"] in ("succeeded", "rejected") for row in rows[1:])
    assert int(rows[1]["boxes_predicted"]) > 0 and int(rows[1]["corrections"]) > 0
    assert float(rows[-1]["heldout_map"]) > float(rows[0]["heldout_map"]), done.stdout

    assert (out / "rounds.png").stat().st_size > 10_000
    results = (out / "results.md").read_text()
    assert header in results and "groundloop demo --rounds 2 --images-per-round 24" in results
    assert "- machine: " in results
