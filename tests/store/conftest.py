"""Store fixtures: a store on SQLite and on a throwaway real PostgreSQL, and webhook bodies to feed it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Iterator

import pytest

from active_learning.store import Store
from tests.support.postgres import create_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'groundloop.db'}"
    return create_database(request.getfixturevalue("postgres_server"))


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
