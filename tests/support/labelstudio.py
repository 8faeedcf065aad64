"""A real Label Studio server for end-to-end tests, started from its own virtual env.

Started the way tests/data/ls-protocol/README.md describes (the flags and environment a real deployment
needs so that it talks to an ML backend on 127.0.0.1). The venv is ``$GROUNDLOOP_LS_VENV`` or
``<repo>/.ls-venv`` (scripts/test.sh installs it). Its log file is kept in the data dir and quoted on failure.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from label_studio_sdk import LabelStudio

from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 240.0
"""First start on an empty data dir runs migrations (30-60 s alone; more on a busy 2-core machine)."""


def ls_venv() -> Path:
    return Path(os.environ.get("GROUNDLOOP_LS_VENV") or REPO / ".ls-venv")


@dataclass
class LabelStudioServer:
    url: str
    api_key: str
    files_root: Path
    """``LOCAL_FILES_DOCUMENT_ROOT``: local storages must point at a SUBdirectory of it."""
    log_path: Path
    process: subprocess.Popen
    client: LabelStudio = field(init=False)

    def __post_init__(self) -> None:
        self.client = LabelStudio(base_url=self.url, api_key=self.api_key)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A raw REST call with the legacy token; raises on HTTP errors with the response body in the message."""
        kwargs.setdefault("timeout", 120)
        response = requests.request(
            method, self.url + path, headers={"Authorization": f"Token {self.api_key}"}, **kwargs
        )
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_label_studio(workdir: Path) -> LabelStudioServer:
    """Start Label Studio on a free port with a fresh data dir under ``workdir``; wait until /health answers."""
    executable = ls_venv() / "bin" / "label-studio"
    if not executable.exists():
        raise FileNotFoundError(executable)
    data_dir, files_root = workdir / "ls-data", workdir / "ls-files"
    data_dir.mkdir(parents=True, exist_ok=True)
    files_root.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(20)
    env = {
        **os.environ,
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
    }
    command = [
        str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data_dir), "--username", "admin@example.com", "--password", secrets.token_hex(8),
        "--user-token", token, "--enable-legacy-api-token",
    ]
    log_path = workdir / "label-studio.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = LabelStudioServer(
        url=f"http://127.0.0.1:{port}", api_key=token, files_root=files_root, log_path=log_path, process=process
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {process.returncode}; log {log_path}:\n{server.log_tail()}")
        try:
            if requests.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(1)
    server.stop()
    raise RuntimeError(f"Label Studio not healthy after {START_TIMEOUT:.0f} s; log {log_path}:\n{server.log_tail()}")
