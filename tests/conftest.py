"""Fixtures shared by every test package: a real Label Studio, the offline small model, captured LS requests."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Callable, Iterator

# Tests never download: the small model is built from files on disk. Set before anything imports huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tests.labelstudio import LabelStudioServer, ls_venv, start_label_studio  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROTOCOL_DIR = REPO.parent / "shared" / "ls-protocol"
"""Request bodies a real Label Studio 1.23.2 sent to an ML backend (see its README.md)."""


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio 1.23.2 for the whole session: ``.url``, ``.api_key``, ``.client``, ``.api(...)``."""
    if not (ls_venv() / "bin" / "label-studio").exists():
        pytest.skip(f"no Label Studio venv at {ls_venv()}: run scripts/test.sh or set GROUNDLOOP_LS_VENV")
    server = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline small Grounding DINO (random detection head), built once per session."""
    from model import build_small_model

    return Path(build_small_model(tmp_path_factory.mktemp("small-model"), seed=0))


@pytest.fixture(scope="session")
def ls_request() -> Callable[[str], dict]:
    """``ls_request("setup")`` -> a fresh copy of the body Label Studio sent (``<name>.json`` in PROTOCOL_DIR)."""
    if not PROTOCOL_DIR.is_dir():
        pytest.skip(f"captured Label Studio requests not found at {PROTOCOL_DIR}")
    bodies = {path.stem: json.loads(path.read_text())["body"] for path in PROTOCOL_DIR.glob("*.json")}
    return lambda name: copy.deepcopy(bodies[name])
