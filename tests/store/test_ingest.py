"""Webhook ingestion from the bodies a real Label Studio sent, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from active_learning.store import Store

CREATED_BOX = [8.0, 8.02, 30.02, 30.0]  # x 12.5 %, y 16.7 %, w 34.4 %, h 45.8 % of 64 x 48
UPDATED_BOX = [12.8, 9.6, 32.0, 24.0]   # x 20 %, y 20 %, w 30 %, h 30 %


def test_annotation_created_is_stored_in_pixels(store: Store, webhook) -> None:
    result = store.ingest(webhook("annotation_created"))

    assert (result.action, result.handled) == ("ANNOTATION_CREATED", True)
    annotation = store.annotations.get(1)
    assert annotation.boxes == [{"label": "dog", "box": CREATED_BOX, "from_name": "label"}]
    assert (annotation.task_id, annotation.project_id, annotation.completed_by) == (1, 1, 1)
    assert annotation.lead_time == 3.2 and not annotation.was_cancelled and not annotation.deleted
    assert annotation.prediction is None  # Label Studio sent {}
    assert annotation.project_model_version == "capture"
    assert annotation.raw["unique_id"] == "b6ed422c-5db0-47ea-83a9-f83a0aebe8fb"
    task = store.tasks.get(1)
    assert (task.image_url, task.width, task.height) == ("/data/upload/1/4eeb0230-img1.png", 64, 48)
    assert store.annotations.count(1) == 1
    assert store.annotations.count(1, since=annotation.ingested_at) == 0
    project = store.projects.get(1)
    assert project.model_version == "capture" and "RectangleLabels" in project.label_config
    assert [c.name for c in store.projects.schema(project.id).classes] == ["cat", "dog"]


def test_update_replaces_the_boxes(store: Store, webhook) -> None:
    store.ingest(webhook("annotation_created"))
    store.ingest(webhook("annotation_updated"))

    assert store.annotations.get(1).boxes == [{"label": "cat", "box": UPDATED_BOX, "from_name": "label"}]
    assert len(store.annotations.of_project(1)) == 1


def test_duplicate_and_out_of_order_events_leave_the_newest(store: Store, webhook) -> None:
    created, updated = webhook("annotation_created"), webhook("annotation_updated")
    for body in (updated, created, updated, created):  # update before its create, then repeats
        assert store.ingest(body).handled
    annotation = store.annotations.get(1)
    assert annotation.boxes[0]["label"] == "cat"
    assert len(store.annotations.of_project(1)) == 1


def test_stale_update_after_a_newer_one_is_ignored(store: Store, webhook) -> None:
    newer = webhook("annotation_updated", updated_at="2026-11-21T23:30:00Z")
    newer["annotation"]["result"][0]["value"]["rectanglelabels"] = ["dog"]
    store.ingest(newer)
    store.ingest(webhook("annotation_updated"))  # older updated_at, label cat

    assert store.annotations.get(1).boxes[0]["label"] == "dog"


def test_prediction_it_started_from_is_kept(store: Store, webhook) -> None:
    start = {"id": 7, "model_version": "gl-1", "score": 0.8, "result": []}
    store.ingest(webhook("annotation_created", prediction=start))
    store.ingest(webhook("annotation_updated"))  # sends prediction {} again

    assert store.annotations.get(1).prediction == start


def test_annotations_deleted_by_id_only(store: Store, webhook) -> None:
    store.ingest(webhook("annotation_created"))
    result = store.ingest(webhook("annotations_deleted"))

    assert result.handled and "1 of 1" in result.message
    assert store.annotations.get(1).deleted
    assert store.annotations.of_project(1) == [] and store.tasks.labeled(1) == []
    store.ingest(webhook("annotation_updated"))  # a late update does not bring it back
    assert store.annotations.get(1).deleted


def test_skip_is_recorded_and_not_trained_on(store: Store, webhook) -> None:
    result = store.ingest(webhook("annotation_created", was_cancelled=True, result=[]))

    assert "skip" in result.message
    assert store.annotations.get(1).was_cancelled
    assert store.tasks.labeled(1) == [] and store.annotations.count(1) == 0


def test_start_training_queues_one_run(store: Store, webhook) -> None:
    first = store.ingest(webhook("start_training"))
    second = store.ingest(webhook("start_training"))

    runs = store.runs.of_project(1)
    assert first.handled and [r.status for r in runs] == ["queued"]
    assert str(runs[0].id) in first.message and first.message == second.message
    assert runs[0].trigger == "webhook"


def test_tasks_deleted_marks_task_and_its_annotations(store: Store, webhook) -> None:
    store.ingest(webhook("annotation_created"))
    result = store.ingest(webhook("tasks_deleted"))

    assert result.handled and store.tasks.get(1).deleted and store.annotations.get(1).deleted
    assert store.tasks.ids(1) == []


def test_unknown_action_is_acknowledged(store: Store, webhook) -> None:
    result = store.ingest({"action": "LABEL_LINK_CREATED", "label_link": []})
    assert (result.action, result.handled) == ("LABEL_LINK_CREATED", False)


def test_other_control_types_are_kept_raw_not_trained_on(sqlite_store: Store, webhook) -> None:
    choice = {"id": "c1", "from_name": "quality", "to_name": "image", "type": "choices",
              "value": {"choices": ["blurry"]}}
    body = webhook("annotation_created")
    body["annotation"]["result"].append(choice)
    sqlite_store.ingest(body)

    annotation = sqlite_store.annotations.get(1)
    assert annotation.result[-1] == choice and len(annotation.boxes) == 1
    assert sqlite_store.tasks.labeled(1)[0].boxes == annotation.boxes


def test_rotated_box_becomes_its_bounding_box(sqlite_store: Store, webhook) -> None:
    body = webhook("annotation_created")
    body["annotation"]["result"][0]["value"].update(x=50, y=0, width=25, height=50, rotation=90)
    sqlite_store.ingest(body)
    # 16 x 24 px at (32, 0) turned 90 degrees about its top-left corner: x from 8 to 32, y from 0 to 16
    assert sqlite_store.annotations.get(1).boxes[0]["box"] == [8.0, 0.0, 32.0, 16.0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "expected a JSON object"),
        ({"annotation": {}}, "'action' is missing"),
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": "x", "task": 1, "updated_at": "2026-11-21T00:00:00Z"},
          "task": {"id": 1, "data": {}}, "project": {"id": 1}}, "annotation.id"),
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": 1}, "task": {"id": 1, "data": {}},
          "project": {"id": 1}}, "annotation.updated_at"),
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": 1, "updated_at": "2026-11-21T00:00:00Z"},
          "project": {"id": 1}}, "task: expected an object"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [1, 2]}, "annotations[0]"),
        ({"action": "START_TRAINING"}, "'project' is missing"),
    ],
)
def test_malformed_bodies_raise_value_error(sqlite_store: Store, body: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sqlite_store.ingest(body)


def test_malformed_box_names_the_region(sqlite_store: Store, webhook) -> None:
    body = webhook("annotation_created")
    del body["annotation"]["result"][0]["value"]["width"]
    with pytest.raises(ValueError, match=r"result\[0\]\.value"):
        sqlite_store.ingest(body)


def test_bulk_annotations_created(sqlite_store: Store, webhook) -> None:
    single = webhook("annotation_created")
    second = {**single["annotation"], "id": 2, "task": 2}
    body = {"action": "ANNOTATIONS_CREATED", "annotation": [single["annotation"], second],
            "task": [single["task"], {**single["task"], "id": 2}], "project": single["project"]}

    assert sqlite_store.ingest(body).message == "2 annotations saved"
    assert [t.task_id for t in sqlite_store.tasks.labeled(1)] == [1, 2]


def test_sync_keeps_what_it_cannot_read(sqlite_store: Store, webhook) -> None:
    """A stand-in client (the real Label Studio path is in test_labelstudio.py): bad rows are reported, not lost."""
    from active_learning.labelstudio.sync import sync_project

    body = webhook("annotation_created")
    sqlite_store.ingest(body)
    broken = {**body["annotation"], "result": [{"type": "rectanglelabels", "value": {}}]}

    class Client:
        def get_project(self, project_id: int) -> dict:
            return body["project"]

        def tasks_with_annotations(self, project_id: int) -> list[dict]:
            return [{**body["task"], "annotations": [broken]}]

    result = sync_project(sqlite_store, Client(), 1)

    assert result.errors == ["annotation 1: annotation.result[0]: a rectanglelabels region needs value and "
                             "original_width/height"]
    assert not sqlite_store.annotations.get(1).deleted and result.annotations_deleted == 0
