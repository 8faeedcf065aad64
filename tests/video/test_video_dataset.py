"""Learning from video annotations: a human track (keyframes, interpolated by Label Studio) becomes training frames
with the boxes Label Studio shows on them, split by task; a video annotation reaches the store via the webhook."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from active_learning.images import ImageCache
from active_learning.training.dataset import build_dataset
from model.synthetic import write_shapes_video
from tests.support.backend import VIDEO, VIDEO_CONFIG

WIDTH, HEIGHT, FRAMES = VIDEO["width"], VIDEO["height"], VIDEO["frames"]


def truth():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return write_shapes_video(Path(tmp) / "v.mp4", **VIDEO)  # the video the media fixture serves


def keyframe(frame: int, box, enabled: bool = True) -> dict:
    x1, y1, x2, y2 = box
    return {"frame": frame, "enabled": enabled, "rotation": 0, "x": 100 * x1 / WIDTH, "y": 100 * y1 / HEIGHT,
            "width": 100 * (x2 - x1) / WIDTH, "height": 100 * (y2 - y1) / HEIGHT, "time": frame / 12}


def annotate(store, task_id: int, result: list[dict]) -> None:
    store.ingest({"action": "ANNOTATION_CREATED", "project": {"id": 5, "label_config": VIDEO_CONFIG},
                  "task": {"id": task_id, "project": 5, "data": {"video": f"/data/upload/5/{task_id}.mp4"}},
                  "annotation": {"id": 500 + task_id, "task": task_id, "project": 5, "result": result,
                                 "updated_at": "2026-12-04T10:00:00Z"}})


def square_track(boxes) -> dict:
    """The red square from the first to the last frame: two keyframes, Label Studio interpolates the rest."""
    return {"id": "a", "from_name": "box", "to_name": "video", "type": "videorectangle",
            "value": {"framesCount": FRAMES, "duration": 2.0, "labels": ["red square"],
                      "sequence": [keyframe(1, boxes[0]), keyframe(FRAMES, boxes[FRAMES - 1], enabled=False)]}}


def test_a_video_annotation_becomes_frames_with_interpolated_boxes_split_by_task(settings, store):
    boxes = [frame.xyxy[0] for frame in truth()]  # the red square, per file frame
    store.projects.set_label_config(5, VIDEO_CONFIG)
    circle = {"id": "b", "from_name": "box", "to_name": "video", "type": "videorectangle",
              "value": {"framesCount": FRAMES, "duration": 2.0, "labels": ["blue circle"],
                        "sequence": [keyframe(5, (60, 0, 80, 20), enabled=False)]}}  # shown on frame 5 alone
    for task_id in range(1, 5):
        annotate(store, task_id, [square_track(boxes), circle])
    cache = ImageCache(replace(settings, video_stride=4, video_train_frames=5))

    dataset = build_dataset(store, cache, 5, val_fraction=0.25, val_min=1)

    assert dataset.skipped == []
    assert len(dataset.train) + len(dataset.validation) == 4 * 5  # 5 frames per video (every 4th of 24, thinned)
    assert set(dataset.train_task_ids).isdisjoint(dataset.validation_task_ids)  # a video never straddles the split
    assert len(dataset.train_files) == len(dataset.train) and all(f.exists() for f in dataset.train_files)
    square = dataset.classes.index(next(c for c in dataset.classes if c.name == "red square"))
    for example in dataset.train + dataset.validation:
        assert example.image.size == (WIDTH, HEIGHT)
        [box] = example.targets.xyxy[example.targets.class_id == square]
        # the interpolated box is where the square is in that frame (its motion is linear); find the frame by it
        errors = [np.abs(box - truth_box).max() for truth_box in boxes]
        assert min(errors) < 1.0
    frames_with_circle = sum(int((e.targets.class_id != square).any()) for e in dataset.train + dataset.validation)
    assert frames_with_circle == 4  # frame 5, once per video: the circle is hidden after its disabled keyframe


def test_bad_video_annotations_and_missing_videos_cost_only_their_task(settings, store):
    boxes = [frame.xyxy[0] for frame in truth()]
    store.projects.set_label_config(5, VIDEO_CONFIG)
    annotate(store, 1, [square_track(boxes)])
    unknown = square_track(boxes)
    unknown["value"]["labels"] = ["submarine"]
    annotate(store, 2, [unknown])
    store.ingest({"action": "ANNOTATION_CREATED", "project": {"id": 5},
                  "task": {"id": 3, "project": 5, "data": {"video": "/data/upload/5/broken.mp4"}},
                  "annotation": {"id": 503, "task": 3, "project": 5, "result": [square_track(boxes)],
                                 "updated_at": "2026-12-04T10:00:00Z"}})

    dataset = build_dataset(store, ImageCache(settings), 5, val_fraction=0.25, val_min=1)

    assert set(dataset.train_task_ids + dataset.validation_task_ids) == {1, 2}  # task 2: negative frames
    assert any("task 2: track label 'submarine'" in line for line in dataset.skipped)
    assert any(line.startswith("task 3: video unavailable") and "404" in line for line in dataset.skipped)


def test_correction_statistics_count_tracks_kept_adjusted_added_and_deleted(settings, store):
    from active_learning.reports.corrections import correction_stats

    boxes = [frame.xyxy[0] for frame in truth()]
    store.projects.set_label_config(5, VIDEO_CONFIG)
    kept = square_track(boxes)
    shifted = square_track([box + [0, 2, 0, 2] for box in boxes])  # the annotator moved it down 2 px all along
    wrong = {**square_track([np.array([70, 40, 90, 60])] * FRAMES), "id": "w"}
    wrong["value"] = {**wrong["value"], "labels": ["blue circle"]}
    drawn = {**square_track([np.array([40, 40, 60, 60])] * FRAMES), "id": "d"}
    drawn["value"] = {**drawn["value"], "labels": ["blue circle"]}
    predicted = [kept, wrong]
    store.ingest({"action": "ANNOTATION_CREATED", "project": {"id": 5, "label_config": VIDEO_CONFIG},
                  "task": {"id": 1, "project": 5, "data": {"video": "/data/upload/5/1.mp4"}},
                  "annotation": {"id": 501, "task": 1, "project": 5, "result": [kept, drawn],
                                 "updated_at": "2026-12-04T10:00:00Z",
                                 "prediction": {"model_version": "v1", "result": predicted}}})
    store.ingest({"action": "ANNOTATION_CREATED", "project": {"id": 5, "label_config": VIDEO_CONFIG},
                  "task": {"id": 2, "project": 5, "data": {"video": "/data/upload/5/2.mp4"}},
                  "annotation": {"id": 502, "task": 2, "project": 5, "result": [shifted],
                                 "updated_at": "2026-12-04T10:00:00Z",
                                 "prediction": {"model_version": "v1", "result": [kept]}}})

    [summary] = correction_stats(store, 5).values()
    changes = summary.changes
    assert (changes.kept, changes.moved, changes.deleted, changes.added, changes.relabeled) == (1, 1, 1, 1, 0)
    assert (changes.predicted, changes.final) == (3, 3) and summary.annotations == 2


@pytest.mark.slow  # real fine-tuning
def test_a_training_round_learns_from_video_annotations(settings, store):
    from active_learning.training.worker import Worker

    boxes = [frame.xyxy[0] for frame in truth()]
    store.projects.set_label_config(5, VIDEO_CONFIG)
    for task_id in range(1, 5):
        annotate(store, task_id, [square_track(boxes)])
    quick = replace(settings, epochs=1, measure_min_annotations=0, video_stride=4, video_train_frames=3)
    store.runs.request(5, "test")

    outcome = Worker(quick, store).run_once(project_id=5)

    run = store.runs.get(outcome.run_id)
    assert outcome.status in ("succeeded", "rejected"), run.error
    assert run.train_size + run.val_size == 4 * 3  # three frames of each video
    assert run.val_size % 3 == 0  # whole videos validate
    assert store.models.get(outcome.model_version).metrics["val"]["per_class_ap"].keys() >= {"red square"}
