"""The real server under load and under ``kill -9``: ``groundloop serve --no-worker`` (gunicorn, the small model,
a SQLite file) with basic auth and a webhook secret, driven by client PROCESSES (``load_client.py``)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest
import requests

from active_learning.settings import Settings
from active_learning.store import Store
from tests.support.backend import TOKEN, groundloop_serve, wait_for

pytestmark = pytest.mark.slow

CLIENTS = 8
CREATED, UPDATED, PREDICTS = 400, 100, 50
MAX_PENDING_PREDICTS = 2
AUTH = ("ls", "s3cret-pass")
SECRET = "hook-secret-123"
SECRET_HEADER = {"X-Groundloop-Webhook-Secret": SECRET}
MAX_REQUEST_BYTES = 1024 * 1024


def _flags(small_model_dir: Path, media_url: str) -> list[str]:
    return ["--no-worker", "--workers", "1", "--threads", "8", "--model", str(small_model_dir),
            "--image-size", "128", "--box-threshold", "0.0", "--text-threshold", "0.0", "--max-detections", "3",
            "--label-studio-url", media_url, "--label-studio-api-key", TOKEN,
            "--max-pending-predicts", str(MAX_PENDING_PREDICTS), "--max-request-bytes", str(MAX_REQUEST_BYTES),
            "--basic-auth-user", AUTH[0], "--basic-auth-pass", AUTH[1], "--webhook-secret", SECRET,
            "--log-level", "WARNING"]


def _annotation(ls_request, i: int, action: str) -> dict:
    """An annotation webhook of its own task and annotation id: created labels 'dog', updated labels 'cat'."""
    body = ls_request("webhook_annotation_created" if action == "created" else "webhook_annotation_updated")
    body["annotation"].update(id=10_000 + i, task=20_000 + i)
    body["task"].update(id=20_000 + i, data={"image": f"/data/upload/1/w{i}.png"})
    return body


def _predict(ls_request, i: int) -> dict:
    body = ls_request("predict_retrieve_predictions")
    body["tasks"] = [{"id": 30_000 + i, "data": {"image": f"/data/upload/1/p{i}.png"}}]
    return body


def _server_rss(process: subprocess.Popen) -> int:
    """Resident memory of gunicorn's master and its workers, in bytes."""
    parent = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])


def _workers(process: subprocess.Popen) -> list[int]:
    return sorted(child.pid for child in psutil.Process(process.pid).children(recursive=True))


def _stored(data_dir: Path) -> dict[int, tuple[str, datetime]]:
    store = Store.from_settings(Settings(data_dir=data_dir))
    try:
        return {a.id: (a.boxes[0]["label"], a.updated_at) for a in store.annotations.of_project(1)}
    finally:
        store.close()


def _iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def test_load_from_client_processes_loses_no_annotation_and_sheds_predicts(
        tmp_path, small_model_dir, media, ls_request, figures):
    jobs: list[list] = [[] for _ in range(CLIENTS)]
    for i in range(CREATED):
        jobs[i % CLIENTS].append(["/webhook", _annotation(ls_request, i, "created")])
    for i in range(PREDICTS):
        jobs[i % CLIENTS].insert(i // CLIENTS * 8, ["/predict", _predict(ls_request, i)])
    for i in range(UPDATED):  # after their creation, in the same client
        jobs[i % CLIENTS].append(["/webhook", _annotation(ls_request, i, "updated")])

    with groundloop_serve(tmp_path, *_flags(small_model_dir, media.url), auth=AUTH) as server:
        warm = requests.post(server.url + "/predict", json=_predict(ls_request, 999), auth=AUTH, timeout=120)
        assert warm.status_code == 200
        rss_before = _server_rss(server.process)
        workers_before = _workers(server.process)
        started = time.monotonic()
        clients = [subprocess.Popen([sys.executable, "-m", "tests.hardening.load_client"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
                   for _ in range(CLIENTS)]
        answers = []
        for client, job in zip(clients, jobs):
            client.stdin.write(json.dumps({"url": server.url, "auth": AUTH, "headers": SECRET_HEADER,
                                           "requests": job}).encode())
            client.stdin.close()
        for client in clients:
            answers += json.loads(client.stdout.read())
            assert client.wait(timeout=300) == 0
        seconds = time.monotonic() - started
        rss_after = _server_rss(server.process)
        _check_auth_and_size_limits(server.url, ls_request)
        assert _workers(server.process) == workers_before, "a gunicorn worker died and was replaced"
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log and TOKEN not in log and AUTH[1] not in log and SECRET not in log

    statuses = {}
    for path, status, _ in answers:
        statuses.setdefault(path, {}).setdefault(str(status), 0)
        statuses[path][str(status)] += 1
    assert statuses["/webhook"] == {"200": CREATED + UPDATED}, statuses
    assert statuses["/predict"]["200"] == PREDICTS and set(statuses["/predict"]) <= {"200", "503"}, statuses

    stored = _stored(tmp_path)
    expected = {10_000 + i: ("cat", _iso(ls_request("webhook_annotation_updated")["annotation"]["updated_at"]))
                if i < UPDATED else ("dog", _iso(ls_request("webhook_annotation_created")["annotation"]["updated_at"]))
                for i in range(CREATED)}
    assert stored == expected  # no annotation lost, none duplicated, every update applied

    growth_mb = (rss_after - rss_before) / 2**20
    assert growth_mb < 300, f"server memory grew by {growth_mb:.0f} MB under load"
    latencies = sorted(s for path, status, s in answers if path == "/predict" and status == 200)
    figures["load"] = {
        "clients": CLIENTS, "webhooks": CREATED + UPDATED, "predicts": PREDICTS, "seconds": round(seconds, 1),
        "statuses": statuses, "predict_p50_s": latencies[len(latencies) // 2], "predict_max_s": latencies[-1],
        "rss_before_mb": round(rss_before / 2**20), "rss_after_mb": round(rss_after / 2**20),
        "annotations_stored": len(stored), "annotations_lost": CREATED - len(stored),
        "max_pending_predicts": MAX_PENDING_PREDICTS,
    }


def _check_auth_and_size_limits(url: str, ls_request) -> None:
    """Every route refuses missing and wrong credentials; /webhook also wants the secret; big bodies get 413."""
    routes = [("GET", "/", None), ("GET", "/health", None), ("GET", "/metrics", None), ("GET", "/status", None),
              ("POST", "/setup", ls_request("setup")), ("POST", "/predict", _predict(ls_request, 0)),
              ("POST", "/webhook", _annotation(ls_request, 0, "created"))]
    for method, path, body in routes:
        for auth in (None, (AUTH[0], "wrong"), ("wrong", AUTH[1])):
            answer = requests.request(method, url + path, json=body, auth=auth, headers=SECRET_HEADER, timeout=30)
            assert answer.status_code == 401 and answer.json() == {"error": "authentication required"}, path
        assert requests.request(method, url + path, json=body, auth=AUTH, headers=SECRET_HEADER,
                                timeout=60).status_code == 200, path
    for headers in ({}, {"X-Groundloop-Webhook-Secret": "wrong"}):
        answer = requests.post(url + "/webhook", json=_annotation(ls_request, 0, "created"), auth=AUTH,
                               headers=headers, timeout=30)
        assert answer.status_code == 401 and "X-Groundloop-Webhook-Secret" in answer.json()["error"]
    big = requests.post(url + "/predict", data=b"[" + b"0," * MAX_REQUEST_BYTES + b"0]", auth=AUTH,
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert big.status_code == 413 and "error" in big.json()


def test_kill_9_of_the_server_mid_webhook_burst_loses_no_acknowledged_annotation(
        tmp_path, small_model_dir, media, ls_request, figures):
    """Every webhook answered 200 before the kill is in the store after it; the rest, sent again after the
    restart (as ``groundloop sync`` recovers them from Label Studio), are stored too; SQLite stays intact."""
    total = 300
    flags = _flags(small_model_dir, media.url)
    acknowledged: set[int] = set()
    lock = threading.Lock()

    def send(indices: list[int], url: str) -> None:
        session = requests.Session()
        for i in indices:
            try:
                answer = session.post(url + "/webhook", json=_annotation(ls_request, i, "created"), auth=AUTH,
                                      headers=SECRET_HEADER, timeout=10)
            except requests.RequestException:
                return  # the server is gone
            if answer.status_code == 200:
                with lock:
                    acknowledged.add(10_000 + i)

    with groundloop_serve(tmp_path, *flags, auth=AUTH) as server:
        threads = [threading.Thread(target=send, args=(list(range(k, total, 4)), server.url)) for k in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(acknowledged) >= 60, timeout=120, what="60 webhooks acknowledged")
        gunicorn = psutil.Process(server.process.pid)
        for process in [*gunicorn.children(recursive=True), gunicorn]:
            os.kill(process.pid, signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=60)
    with lock:
        before_restart = set(acknowledged)
    assert 60 <= len(before_restart) < total, "the kill came mid-burst"

    database = tmp_path / "groundloop.db"
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = set(_stored(tmp_path))
    assert before_restart <= stored  # acknowledged means durable

    with groundloop_serve(tmp_path, *flags, auth=AUTH) as server:
        assert requests.post(server.url + "/predict", json=_predict(ls_request, 1), auth=AUTH,
                             timeout=120).status_code == 200
        send([i for i in range(total) if 10_000 + i not in stored], server.url)
    assert set(_stored(tmp_path)) == {10_000 + i for i in range(total)}
    figures["server_kill"] = {"webhooks": total, "acknowledged_before_kill": len(before_restart),
                              "stored_before_restart": len(stored), "lost_acknowledged": len(before_restart - stored),
                              "stored_after_resend": total}
