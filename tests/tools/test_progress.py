"""Progress: a bar on a terminal, otherwise a log line every N items and one at the end (never carriage returns
in a log file)."""

from __future__ import annotations

import logging

from active_learning.progress import progress


def test_without_a_terminal_progress_is_a_few_log_lines(caplog, capsys):
    caplog.set_level(logging.INFO, logger="groundloop.progress")
    assert list(progress(range(120), "exporting", "image", every=50)) == list(range(120))
    assert [r.getMessage() for r in caplog.records] == [
        "exporting: 50/120 images", "exporting: 100/120 images", "exporting: 120 images done"]
    assert "\r" not in capsys.readouterr().err
