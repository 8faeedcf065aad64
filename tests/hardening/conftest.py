"""Hardening tests: load, faults and hostile input against real parts (the small model, SQLite files,
``groundloop serve`` under gunicorn, a real Label Studio). Every loop is bounded; all traffic stays on loopback.

``figures`` collects the numbers ``bench/hardening.md`` reports; with ``GROUNDLOOP_HARDENING_FIGURES=FILE`` they
are written there as JSON when the session ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

# the backend's fixtures: real small model, SQLite store, local media server standing in for Label Studio's media
from tests.backend.conftest import (  # noqa: F401
    client, detector, make_client, media, model_version, settings, store)


@pytest.fixture(scope="session")
def figures() -> Iterator[dict]:
    collected: dict = {}
    yield collected
    target = os.environ.get("GROUNDLOOP_HARDENING_FIGURES")
    if target:
        Path(target).write_text(json.dumps(collected, indent=2, sort_keys=True) + "\n")
