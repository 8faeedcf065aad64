"""Training runs (one round at a time per project, crash-safe leases), model versions, served predictions."""

from __future__ import annotations

import pytest

from active_learning.store import Store


def test_one_round_at_a_time_per_project(store: Store) -> None:
    first = store.runs.request(1, "webhook")
    assert store.runs.request(1, "auto") == first  # joins the queued request
    other_project = store.runs.request(2, "cli")

    run = store.runs.claim("trainer-a", project_id=1)
    assert (run.id, run.status, run.lease_owner) == (first, "running", "trainer-a")
    second = store.runs.request(1, "auto")  # queued behind the running one
    assert second != first
    assert store.runs.claim("trainer-b", project_id=1) is None
    assert store.runs.claim("trainer-b").id == other_project

    store.runs.update(first, train_size=8, val_size=2, epoch={"epoch": 1, "map50": 0.4})
    store.runs.update(first, epoch={"epoch": 2, "map50": 0.5})
    store.runs.finish(first, "rejected", model_version="p1-v2")
    done = store.runs.get(first)
    assert (done.status, done.train_size, done.val_size, done.model_version) == ("rejected", 8, 2, "p1-v2")
    assert [e["epoch"] for e in done.epochs] == [1, 2] and done.finished_at is not None
    assert store.runs.claim("trainer-b", project_id=1).id == second


def test_expired_lease_fails_the_run_and_frees_the_project(store: Store) -> None:
    dead = store.runs.request(1, "webhook")
    store.runs.claim("crashed", lease_seconds=-1)
    assert not store.runs.renew_lease(dead, "someone-else")
    queued = store.runs.request(1, "auto")

    assert store.runs.claim("trainer").id == queued
    failed = store.runs.get(dead)
    assert failed.status == "failed" and "lease expired" in failed.error
    assert not store.runs.renew_lease(dead, "crashed")
    assert store.runs.renew_lease(queued, "trainer")


def test_deploying_a_version_retires_the_previous_one(store: Store) -> None:
    store.models.add("p1-v1", "/models/p1-v1", project_id=1, parent="IDEA-Research/grounding-dino-tiny",
                            metrics={"map50": 0.3}, status="deployed")
    store.models.add("p1-v2", "/models/p1-v2", project_id=1, parent="p1-v1")
    store.models.add("p2-v1", "/models/p2-v1", project_id=2, status="deployed")
    assert store.models.deployed(1).name == "p1-v1"

    store.models.set_status("p1-v2", "deployed", metrics={"map50": 0.5})

    assert {m.name: m.status for m in store.models.versions(1)} == {"p1-v1": "retired", "p1-v2": "deployed"}
    assert store.models.deployed(1).metrics == {"map50": 0.5}
    assert store.models.deployed(2).name == "p2-v1"
    with pytest.raises(ValueError, match="model status"):
        store.models.set_status("p1-v2", "great")


def test_served_predictions_are_found_by_url_version_and_params(store: Store) -> None:
    for score in (0.2, 0.7):
        store.predictions.save(project_id=1, task_id=3, image_url="/data/upload/1/a.png", model_version="v1",
                              params_key="k", result=[{"type": "rectanglelabels"}], score=score)

    assert store.predictions.find("/data/upload/1/a.png", "v1", "k") == {
        "result": [{"type": "rectanglelabels"}], "score": 0.7, "model_version": "v1"}
    assert store.predictions.find("/data/upload/1/a.png", "v1", "other") is None
    assert store.predictions.find("/data/upload/1/a.png", "v2", "k") is None
    assert len(store.predictions.served(3, "v1")) == 2


def test_prompt_is_remembered_per_project(store: Store) -> None:
    assert store.projects.prompt(5) is None
    store.projects.set_prompt(5, "red car")
    store.projects.set_label_config(5, "<View/>")  # a config change keeps the prompt
    assert store.projects.prompt(5) == "red car"
    assert store.projects.get(5).label_config == "<View/>"


def test_migrations_run_once_and_reopen(database_url: str) -> None:
    Store(database_url).close()
    store = Store(database_url)  # already at head: nothing to do
    with store.db.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0002"
    store.close()


def test_migrations_match_the_tables(store: Store) -> None:
    """A change to tables.py without a migration fails here (write one: python -m active_learning.migrations)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from active_learning.store.tables import Base

    with store.db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
