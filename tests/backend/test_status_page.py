"""The status page in a real headless Chromium, served by the real server (``groundloop serve``).

The project behind it is built with real parts: the simulated annotator labels images pre-annotated by the small
model (so correction statistics exist for two versions), and three training rounds are recorded through the store
and the registry as the worker records them: one promoted, one rejected, one failed with an error that carries
HTML, as user-supplied text can.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from active_learning.labelstudio.records import ProjectRecord
from active_learning.training.registry import register
from active_learning.tools.demo import LABEL_CONFIG, PROJECT, SimulatedProject, demo_settings
from model.synthetic import make_shapes_dataset

from tests.support.backend import groundloop_serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TITLE = "Shapes <script>alert('title')</script> & co"
ERROR = "RuntimeError: <b>out of memory</b> & more"
AS_BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def _epochs(maps: list[float]) -> list[dict]:
    return [{"epoch": i, "train_loss": 1.0 / i, "seconds": 1.0, "map": m, "map50": 2 * m,
             "per_class_ap": {"circle": m, "square": m / 2}} for i, m in enumerate(maps, 1)]


def _round(project: SimulatedProject, model_dir: Path, name: str | None, maps: list[float], baseline: float,
           status: str, error: str | None = None) -> None:
    """Record a finished training round as rounds.py does: epochs, sizes, the candidate's version, the decision."""
    store, settings = project.store, project.settings
    run_id = store.runs.request(PROJECT, "auto")
    assert store.runs.claim("test", project_id=PROJECT).id == run_id
    store.runs.update(run_id, train_size=9, val_size=3)
    for epoch in _epochs(maps):
        store.runs.update(run_id, epoch=epoch)
    if name:
        best = max(range(len(maps)), key=maps.__getitem__)
        checkpoint = settings.data_dir / "checkpoints" / name
        shutil.copytree(model_dir, checkpoint)
        metrics = {"val": _epochs(maps)[best], "baseline": {"map": baseline, "map50": 0.0, "per_class_ap": {}},
                   "best_epoch": best + 1, "train_size": 9, "val_size": 3}
        register(store, settings, checkpoint, name, project_id=PROJECT, parent=project.serving()[1],
                 metrics=metrics, deploy=status == "succeeded")
    store.runs.finish(run_id, status, model_version=name, error=error)


@pytest.fixture
def data_dir(tmp_path: Path, small_model_dir: Path) -> Path:
    project = SimulatedProject(demo_settings(tmp_path, model=str(small_model_dir), device="cpu",
                                             box_threshold=0.0, text_threshold=0.0, max_detections=3))
    project.store.projects.save(ProjectRecord(PROJECT, LABEL_CONFIG, TITLE, None))
    images = make_shapes_dataset(6, seed=5)
    for sample in images[:3]:
        project.label(sample)
    _round(project, small_model_dir, "groundloop-p1-r1", [0.02, 0.05, 0.04], baseline=0.01, status="succeeded")
    _round(project, small_model_dir, "groundloop-p1-r2", [0.03, 0.04], baseline=0.05, status="rejected")
    _round(project, small_model_dir, None, [], baseline=0.05, status="failed", error=ERROR)
    for sample in images[3:]:
        project.label(sample)
    project.store.close()
    return tmp_path / "data"


def _chromium(url: str, tmp_path: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1200,1600", *mode, url],
        capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.slow  # the real server and a browser, twice
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (scripts/test.sh installs Debian's as root)")
def test_a_browser_sees_versions_rounds_and_corrections_and_api_clients_get_json(
        data_dir: Path, small_model_dir: Path, tmp_path: Path):
    with groundloop_serve(data_dir, "--no-worker", "--workers", "1", "--model", str(small_model_dir)) as server:
        status_url = server.url + "/status"
        assert requests.get(status_url, timeout=10).json()["projects"][0]["project"] == PROJECT  # API clients: JSON
        json_asked = requests.get(status_url + "?format=json", headers=AS_BROWSER, timeout=10)
        assert json_asked.headers["Content-Type"].startswith("application/json")
        dom = _chromium(status_url, tmp_path, "--dump-dom").stdout
        screenshot = tmp_path / "status_page.png"
        _chromium(status_url, tmp_path, f"--screenshot={screenshot}")

    assert f"Project {PROJECT}" in dom and "groundloop-p1-r1" in dom
    assert "Shapes &lt;script&gt;alert('title')&lt;/script&gt; &amp; co" in dom  # shown as text, never run
    assert "<script" not in dom and "<b>out of memory" not in dom
    assert "RuntimeError: &lt;b&gt;out of memory&lt;/b&gt; &amp; more" in dom
    for decision in ("promoted", "rejected", "failed"):
        assert f'class="badge {decision}">{decision}</span>' in dom
    assert "mAP <strong>0.050</strong>" in dom and "vs deployed 0.010" in dom  # round 1: best epoch 2 vs baseline
    assert "mAP <strong>0.040</strong>" in dom and "vs deployed 0.050" in dom  # round 2: not better, rejected
    assert dom.count("<polyline") == 2  # one mAP curve per round that trained an epoch
    assert "6 tasks, 6 annotations" in dom
    starting = server.model_version
    corrections = dom.split("Corrections by annotators")[1]
    assert f"<code>{starting}</code></td><td class=\"num\">3</td>" in corrections
    assert '<code>groundloop-p1-r1</code></td><td class="num">3</td>' in corrections
    assert screenshot.stat().st_size > 20_000  # bench/status_page.png is one of these


def test_empty_states_read_sensibly_and_basic_auth_applies(make_client, store):
    client, _ = make_client(basic_auth_user="ls", basic_auth_pass="s3cret")
    assert client.get("/status", headers=AS_BROWSER).status_code == 401
    good = {**AS_BROWSER, "Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    page = client.get("/status", headers=good)
    assert page.headers["Content-Type"].startswith("text/html")
    assert "No projects yet" in page.text
    store.projects.save(ProjectRecord(3, LABEL_CONFIG, None, None))
    page = client.get("/status", headers=good).text
    assert "Project 3" in page and "No training rounds yet" in page and "the starting model serves" in page
