"""A throwaway real PostgreSQL for the store tests: a cluster in a temp dir on a free port (run as the
``postgres`` user when the tests run as root, since initdb refuses root), and a fresh database on it per test.
The binaries are Debian's (``apt-get install postgresql``; scripts/test.sh installs them)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.support.net import free_port


def pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _run_as() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _no_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return True
    return False


def unavailable() -> str | None:
    """Why no cluster can be started here (the programs are missing), or None."""
    if pg_bin() is None:
        return "PostgreSQL binaries not found (/usr/lib/postgresql/*/bin): apt-get install postgresql"
    if _run_as() and (shutil.which("runuser") is None or _no_user("postgres")):
        return "running as root, and no 'postgres' user (or runuser) to run PostgreSQL as"
    return None


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A cluster in a temp dir, stopped and removed afterwards; yields its base URL (no database name)."""
    bin_dir, as_user = pg_bin(), _run_as()
    root = Path(tempfile.mkdtemp(prefix="groundloop-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
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


def create_database(base_url: str) -> str:
    """A new, empty database on the cluster at ``base_url``; returns its SQLAlchemy URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base_url}/{name}"
