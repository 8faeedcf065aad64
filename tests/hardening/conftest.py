"""Hardening tests: load, faults and hostile input against real parts (the small model, SQLite files,
``groundloop serve`` under gunicorn, a real Label Studio). Every loop is bounded; all traffic stays on loopback.
The backend's fixtures (``client``, ``make_client``, ``media``, ...) come from tests/support/backend_fixtures.py.

``figures`` collects the numbers ``bench/hardening.md`` reports; with ``GROUNDLOOP_HARDENING_FIGURES=FILE`` they
are written there as JSON when the session ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture(scope="session")
def figures() -> Iterator[dict]:
    collected: dict = {}
    yield collected
    target = os.environ.get("GROUNDLOOP_HARDENING_FIGURES")
    if target:
        Path(target).write_text(json.dumps(collected, indent=2, sort_keys=True) + "\n")
