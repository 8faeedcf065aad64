"""Store fixtures: a store on SQLite and on a throwaway real PostgreSQL, and webhook bodies to feed it."""

from __future__ import annotations

import copy
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from active_learning.store import Store


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _no_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return True
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster in a temp dir for the session; yields its base URL (no database name)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin): apt-get install postgresql")
    # initdb refuses to run as root: run the server as the 'postgres' user then.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user and (shutil.which("runuser") is None or _no_user("postgres")):
        pytest.skip("running as root, and no 'postgres' user (or runuser) to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="groundloop-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                    "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'groundloop.db'}"
    import psycopg

    base = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'groundloop.db'}")
    yield store
    store.close()


@pytest.fixture
def webhook(ls_request: Callable[[str], dict]) -> Callable[..., dict]:
    """``webhook("annotation_created", **annotation_changes)``: a captured webhook body, optionally edited.

    ``tasks_deleted`` has no capture: it is built the way Label Studio 1.23.2 builds it
    (webhooks/models.py: key ``tasks``, ``OnlyIDWebhookSerializer``, plus the project).
    """

    def make(name: str, **annotation: object) -> dict:
        if name == "tasks_deleted":
            project = ls_request("webhook_start_training")["project"]
            body = {"action": "TASKS_DELETED", "tasks": [{"id": 1}], "project": project}
        else:
            body = ls_request(f"webhook_{name}")
        if annotation:
            body["annotation"].update(copy.deepcopy(annotation))
        return body

    return make
