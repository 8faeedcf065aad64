"""Two real processes (the web server and the trainer, in life) writing one SQLite file at once."""

from __future__ import annotations

import copy
import multiprocessing
from pathlib import Path

from active_learning.store import Store
from active_learning.store.projects import schema_of

EVENTS_PER_PROCESS = 200


def _ingest_many(database_url: str, template: dict, first_id: int) -> None:
    store = Store(database_url)
    for n in range(first_id, first_id + EVENTS_PER_PROCESS):
        body = copy.deepcopy(template)
        body["annotation"]["id"] = n
        body["annotation"]["task"] = body["task"]["id"] = n % 50 + 1  # both processes share tasks and the project
        store.ingest(body)
        if n % 20 == 0:
            store.runs.request(1, "auto")
    store.close()


def test_two_processes_ingesting_lose_nothing(tmp_path: Path, webhook) -> None:
    """Both also start on a database that does not exist yet: one migrates, the other waits for it."""
    url = f"sqlite:///{tmp_path / 'groundloop.db'}"
    template = webhook("annotation_created")
    schema_of(template["project"]["label_config"])  # the label-config parser's slow first import, before forking
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_ingest_many, args=(url, template, 1 + i * EVENTS_PER_PROCESS)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]

    store = Store(url)
    assert [a.id for a in store.annotations.of_project(1)] == list(range(1, 2 * EVENTS_PER_PROCESS + 1))
    assert len(store.tasks.ids(1)) == 50
    assert [r.status for r in store.runs.of_project(1)] == ["queued"]
