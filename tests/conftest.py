"""Fixtures shared by every test package: a real Label Studio, the offline small model, captured LS requests;
the shared fixture plugins of tests/support; and the guard that keeps the ``labelstudio`` and ``postgres`` markers
on every test that needs those servers."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Callable, Iterator

# Tests never download: the small model is built from files on disk. Set before anything imports huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

pytest.register_assert_rewrite("tests.support")  # their asserts (assert_prediction, ...) explain their failures

from tests.support.labelstudio import LabelStudioServer, ls_venv, start_label_studio  # noqa: E402
from tests.support.postgres import postgres_cluster, unavailable  # noqa: E402

pytest_plugins = ["tests.support.backend_fixtures", "tests.support.training_fixtures"]

DATA = Path(__file__).resolve().parent / "data"
PROTOCOL_DIR = DATA / "ls-protocol"
"""Request bodies a real Label Studio 1.23.2 sent to an ML backend (see its README.md): part of the repo."""

LABEL_STUDIO_FIXTURE, LABEL_STUDIO_MARKER = "label_studio", "labelstudio"
POSTGRES_FIXTURE, POSTGRES_MARKER = "postgres_server", "postgres"
POSTGRES_PARAM = "postgres"
"""A parametrized test or fixture (``database_url``) whose parameter is this runs on PostgreSQL."""


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio 1.23.2 for the whole session: ``.url``, ``.api_key``, ``.client``, ``.api(...)``.
    Tests that use it must be marked ``labelstudio`` (checked at collection)."""
    if not (ls_venv() / "bin" / "label-studio").exists():
        pytest.skip(f"no Label Studio venv at {ls_venv()}: run scripts/test.sh or set GROUNDLOOP_LS_VENV")
    server = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster in a temp dir for the session; yields its base URL (no database name).
    Tests that use it (directly or through ``database_url``'s postgres parameter) must be marked ``postgres``."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with postgres_cluster() as url:
        yield url


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline small Grounding DINO (random detection head), built once per session."""
    from model import build_small_model

    return Path(build_small_model(tmp_path_factory.mktemp("small-model"), seed=0))


@pytest.fixture(scope="session")
def detector(small_model_dir: Path):
    """The small model loaded once as a Detector: it is read-only and thread-safe."""
    from model import Detector

    return Detector.load(small_model_dir, device="cpu")


@pytest.fixture(scope="session")
def small_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny DINOv2 (random weights) the crop classifier reads crops with, built once per session."""
    from model.factory import build_small_crop_encoder

    return Path(build_small_crop_encoder(tmp_path_factory.mktemp("small-encoder"), seed=0))


@pytest.fixture(scope="session")
def small_segmenter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny SAM (random weights, 128 px), built once per session."""
    from model import build_small_segmenter

    return Path(build_small_segmenter(tmp_path_factory.mktemp("small-segmenter"), seed=0))


@pytest.fixture(scope="session")
def segmenter(small_segmenter_dir: Path):
    """The tiny SAM loaded once as a Segmenter: it is read-only and thread-safe."""
    from model import Segmenter

    return Segmenter.load(small_segmenter_dir, device="cpu")


@pytest.fixture(scope="session")
def ls_request() -> Callable[[str], dict]:
    """``ls_request("setup")`` -> a fresh copy of the body Label Studio sent (``<name>.json`` in PROTOCOL_DIR).
    The captures are in the repo: a missing one is an error, never a skip."""
    captures = sorted(PROTOCOL_DIR.glob("*.json"))
    if not captures:
        raise FileNotFoundError(f"no captured Label Studio requests (*.json) in {PROTOCOL_DIR}")
    bodies = {path.stem: json.loads(path.read_text())["body"] for path in captures}

    def body(name: str) -> dict:
        if name not in bodies:
            raise FileNotFoundError(f"no captured Label Studio request {PROTOCOL_DIR / (name + '.json')}; "
                                    f"captured: {', '.join(sorted(bodies))}")
        return copy.deepcopy(bodies[name])

    return body


def _runs_on_postgres(item: pytest.Item) -> bool:
    if POSTGRES_FIXTURE in getattr(item, "fixturenames", ()):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(isinstance(value, str) and value == POSTGRES_PARAM for value in params.values())


@pytest.hookimpl(tryfirst=True)  # before ``-m``/``-k`` deselect anything: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail collection when a test needs a real Label Studio or PostgreSQL without carrying its marker, so that
    ``-m "not labelstudio"`` / ``-m "not postgres"`` really leave those servers out."""
    problems = []
    for item in items:
        if LABEL_STUDIO_FIXTURE in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
                LABEL_STUDIO_MARKER):
            problems.append(f"{item.nodeid}: uses the {LABEL_STUDIO_FIXTURE!r} fixture (a real Label Studio) "
                            f"but is not marked @pytest.mark.{LABEL_STUDIO_MARKER}")
        if _runs_on_postgres(item) and not item.get_closest_marker(POSTGRES_MARKER):
            problems.append(f"{item.nodeid}: runs on PostgreSQL (the {POSTGRES_FIXTURE!r} fixture or a "
                            f"{POSTGRES_PARAM!r} parameter) but is not marked @pytest.mark.{POSTGRES_MARKER} "
                            f"(for a parameter: pytest.param(..., marks=pytest.mark.{POSTGRES_MARKER}))")
    if problems:
        raise pytest.UsageError("tests without the marker their servers need (see [tool.pytest.ini_options] "
                                "markers in pyproject.toml):\n  " + "\n  ".join(problems))
