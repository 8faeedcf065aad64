"""The backend's test constants and helpers: the label config and image size the backend tests use, a PNG maker,
deploying a copy of a model as a project's version, ``groundloop serve`` in a subprocess, waiting for a condition,
and what any prediction of the small model must satisfy.

The small model's weights are random: thresholds of 0 make it draw boxes, and tests assert only what holds for
any weights (one answer per task in order, box counts, labels from the project's classes, boxes in the image).
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import requests
from PIL import Image, ImageDraw

from active_learning.settings import Settings
from active_learning.store import Store
from active_learning.training.registry import register
from tests.support.net import free_port

IMAGE_SIZE = (64, 48)
"""Every image the ``media`` fixture serves."""
TOKEN = "test-token"
"""The Label Studio API key the ``media`` fixture wants."""
MAX_DETECTIONS = 3
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image">'
    '<Label value="cat"/><Label value="dog" predicted_values="puppy,hound"/>'
    "</RectangleLabels></View>"
)


VIDEO = {"frames": 24, "fps": 12.0, "width": 96, "height": 64}
"""The video the ``media`` fixture serves (``model.synthetic.write_shapes_video``): 2 s."""
VIDEO_CONFIG = (
    '<View><Video name="video" value="$video" frameRate="12"/>'
    '<VideoRectangle name="box" toName="video"/>'
    '<Labels name="videoLabels" toName="video"><Label value="red square"/><Label value="blue circle"/></Labels>'
    "</View>"
)


@dataclass
class Media:
    """Label Studio's media for the tests (the ``media`` fixture): any ``/data/upload/...`` path is a PNG, except
    names containing ``broken`` (404); the test token is required, as Label Studio requires its key."""

    url: str
    requests: list[str] = field(default_factory=list)
    video: bytes = b""


def deploy_copy(settings: Settings, store: Store, model_dir: Path, project_id: int, name: str,
                metrics: dict | None = None, parent: str | None = None) -> None:
    """Deploy a copy of ``model_dir`` as version ``name`` of the project, as a promoted round does."""
    checkpoint = settings.data_dir / "checkpoints" / name
    shutil.copytree(model_dir, checkpoint)
    register(store, settings, checkpoint, name, project_id=project_id, parent=parent, metrics=metrics or {},
             deploy=True)


def png_bytes(size: tuple[int, int], seed: int) -> bytes:
    """A small PNG with a few coloured rectangles."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
        draw.rectangle([x, y, x + size[0] // 3, y + size[1] // 3], fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Server:
    url: str
    model_version: str
    """The starting model's, as /health answers it."""
    process: subprocess.Popen
    log_path: Path


@contextmanager
def groundloop_serve(workdir: Path, *flags: str, auth: tuple[str, str] | None = None) -> Iterator[Server]:
    """``groundloop serve`` (gunicorn, the real CLI) on a free port with data in ``workdir``; stopped by its pid.
    ``auth``: the basic auth credentials the flags set, for the readiness check."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "groundloop"), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(workdir), "--device", "cpu", *flags]
    log_path = workdir / "groundloop.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_for(lambda: _health(url, process, log_path, auth), timeout=180, what="groundloop serve")
        yield Server(url, health["model_version"], process, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


def _health(url: str, process: subprocess.Popen, log_path: Path, auth: tuple[str, str] | None) -> dict | None:
    if process.poll() is not None:
        raise AssertionError(f"groundloop serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
    try:
        answer = requests.get(url + "/health", auth=auth, timeout=2)
    except requests.RequestException:
        return None
    return answer.json() if answer.status_code == 200 else None


def wait_for(check: Callable[[], object], timeout: float, what: str):
    """``check()``'s first truthy value, polled every 0.2 s; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def assert_prediction(prediction: dict, model_version: str, labels=("cat", "dog")) -> None:
    """Label Studio's format, and what holds for any weights: a few boxes, inside the image, of our labels."""
    assert prediction["model_version"] == model_version
    assert 0.0 <= prediction["score"] <= 1.0
    assert 0 < len(prediction["result"]) <= MAX_DETECTIONS, "thresholds of 0 must give boxes"
    for region in prediction["result"]:
        assert (region["from_name"], region["to_name"], region["type"]) == ("label", "image", "rectanglelabels")
        assert (region["original_width"], region["original_height"]) == IMAGE_SIZE
        assert 0.0 <= region["score"] <= 1.0
        value = region["value"]
        assert value["rectanglelabels"][0] in labels
        assert 0 <= value["x"] and value["x"] + value["width"] <= 100 + 1e-6
        assert 0 <= value["y"] and value["y"] + value["height"] <= 100 + 1e-6
