"""Correction statistics: how annotators changed served predictions, on constructed cases."""

from __future__ import annotations

import pytest

from active_learning.reports.corrections import compare_boxes, correction_stats
from active_learning.store import Store


def box(label: str, x1: float, y1: float, x2: float, y2: float) -> dict:
    return {"label": label, "box": [x1, y1, x2, y2]}


def region(label: str, x1: float, y1: float, x2: float, y2: float, size: tuple[int, int] = (100, 100)) -> dict:
    """A Label Studio rectanglelabels region (percentages) for a pixel box on a ``size`` image."""
    w, h = size
    return {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": w,
            "original_height": h, "value": {"x": x1 * 100 / w, "y": y1 * 100 / h, "width": (x2 - x1) * 100 / w,
                                            "height": (y2 - y1) * 100 / h, "rotation": 0, "rectanglelabels": [label]}}


def test_each_predicted_box_is_kept_moved_relabeled_or_deleted() -> None:
    predicted = [
        box("cat", 0, 0, 10, 10),     # left as is
        box("dog", 20, 20, 40, 40),   # redrawn: IoU 0.64
        box("cat", 50, 50, 60, 60),   # same place, now "dog"
        box("car", 80, 80, 90, 90),   # removed
    ]
    final = [
        box("cat", 0, 0, 10, 10.5),
        box("dog", 20, 20, 36, 36),
        box("dog", 50, 50, 60, 60),
        box("bus", 0, 70, 10, 80),    # drawn by the annotator
    ]
    changes = compare_boxes(predicted, final)

    assert (changes.kept, changes.moved, changes.relabeled, changes.deleted, changes.added) == (1, 1, 1, 1, 1)
    assert changes.precision == 0.5 and changes.recall == 0.5 and not changes.unchanged


def test_same_label_partner_is_preferred_over_a_closer_wrong_label() -> None:
    predicted = [box("cat", 0, 0, 10, 10)]
    final = [box("dog", 0, 0, 10, 10), box("cat", 0, 0, 10, 13)]  # IoU 1.0 but wrong label vs IoU 0.77
    changes = compare_boxes(predicted, final)
    assert (changes.moved, changes.relabeled, changes.added) == (1, 0, 1)


@pytest.mark.parametrize(
    ("predicted", "final", "expected"),
    [
        ([], [], (0, 0, None, None)),
        ([box("cat", 0, 0, 10, 10)], [], (1, 0, 0.0, None)),
        ([], [box("cat", 0, 0, 10, 10)], (0, 1, None, 0.0)),
        ([box("cat", 0, 0, 10, 10)], [box("cat", 30, 30, 40, 40)], (1, 1, 0.0, 0.0)),  # no overlap: delete + add
    ],
)
def test_empty_and_disjoint_cases(predicted: list, final: list, expected: tuple) -> None:
    changes = compare_boxes(predicted, final)
    assert (changes.deleted, changes.added, changes.precision, changes.recall) == expected


def _annotate(store: Store, webhook, annotation_id: int, task_id: int, result: list, **extra: object) -> None:
    """Annotate with project model version v1; created far in the future (after anything served) unless told."""
    times = {"created_at": "2099-01-01T00:00:00Z", "updated_at": "2099-01-01T00:00:00Z"}
    body = webhook("annotation_created", id=annotation_id, task=task_id, result=result, **{**times, **extra})
    body["task"]["id"] = task_id
    body["project"]["model_version"] = "v1"
    store.ingest(body)


def test_stats_per_model_version_from_served_and_sent_predictions(sqlite_store: Store, webhook) -> None:
    store = sqlite_store
    # Task 1: we served v1 (a stale v0 prediction too), the annotator kept it.
    store.predictions.save(project_id=1, task_id=1, image_url="/a.png", model_version="v0", params_key="k",
                          result=[region("dog", 50, 50, 90, 90)], score=0.3)
    store.predictions.save(project_id=1, task_id=1, image_url="/a.png", model_version="v1", params_key="k",
                          result=[region("cat", 10, 10, 50, 50)], score=0.9)
    _annotate(store, webhook, 1, 1, [region("cat", 10, 10, 50, 50)])
    # Task 2: Label Studio sent the starting prediction (model v2); the annotator relabeled and added a box.
    sent = {"model_version": "v2", "result": [region("cat", 0, 0, 20, 20)]}
    _annotate(store, webhook, 2, 2, [region("dog", 0, 0, 20, 20), region("cat", 60, 60, 80, 80)], prediction=sent)
    # Task 3: nothing served, no prediction sent: not counted. Task 4: a skip: not counted.
    _annotate(store, webhook, 3, 3, [region("cat", 0, 0, 20, 20)])
    store.predictions.save(project_id=1, task_id=4, image_url="/d.png", model_version="v1", params_key="k",
                          result=[region("cat", 0, 0, 20, 20)], score=0.5)
    _annotate(store, webhook, 4, 4, [], was_cancelled=True)

    stats = {version: summary.as_dict() for version, summary in correction_stats(store, 1).items()}

    counts = {"kept": 1, "moved": 0, "relabeled": 0, "deleted": 0, "added": 0, "predicted": 1, "final": 1,
              "precision": 1.0, "recall": 1.0}
    assert stats["v1"] == {"model_version": "v1", "annotations": 1, "unchanged_annotations": 1, **counts,
                           "controls": {"label": counts}}
    assert stats["v2"]["relabeled"] == 1 and stats["v2"]["added"] == 1
    assert (stats["v2"]["precision"], stats["v2"]["recall"]) == (0.0, 0.0)
    assert set(stats) == {"v1", "v2"}


def test_prediction_served_after_the_annotation_does_not_count(sqlite_store: Store, webhook) -> None:
    _annotate(sqlite_store, webhook, 1, 1, [region("cat", 10, 10, 50, 50)],
              created_at="2026-01-01T00:00:00Z", updated_at="2026-01-01T00:00:00Z")
    sqlite_store.predictions.save(project_id=1, task_id=1, image_url="/a.png", model_version="v1", params_key="k",
                                 result=[region("cat", 10, 10, 50, 50)], score=0.9)  # served now, later
    assert correction_stats(sqlite_store, 1) == {}


def brush(label: str, mask, from_name: str = "brush") -> dict:
    """A Label Studio brushlabels region of a bool mask (Label Studio's RLE, label-studio-sdk's encoder)."""
    import numpy as np
    from label_studio_sdk.converter.brush import mask2rle

    return {"type": "brushlabels", "from_name": from_name, "to_name": "image", "original_width": mask.shape[1],
            "original_height": mask.shape[0],
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]}}


def _masks():
    import numpy as np

    full = np.zeros((60, 80), dtype=bool)
    full[10:50, 10:70] = True
    frame = full.copy()
    frame[13:47, 13:67] = False  # the same bounding box, a fraction of the pixels
    nudged = full.copy()
    nudged[10:12, 10:70] = False  # 5 % fewer pixels
    return full, frame, nudged


def test_masks_are_paired_by_mask_iou_not_by_their_boxes() -> None:
    from active_learning.labelstudio.regions import boxes_from_result

    full, frame, nudged = _masks()
    predicted, _ = boxes_from_result([brush("cat", full)])
    redrawn, _ = boxes_from_result([brush("cat", frame)])
    kept, _ = boxes_from_result([brush("cat", nudged)])
    assert predicted[0]["box"] == redrawn[0]["box"]  # box IoU 1: boxes alone would call it kept

    changes = compare_boxes(predicted, redrawn)
    assert (changes.kept, changes.moved, changes.deleted, changes.added) == (0, 0, 1, 1)
    changes = compare_boxes(predicted, kept)
    assert (changes.kept, changes.moved, changes.deleted, changes.added) == (1, 0, 0, 0)
    # Without masks on one side (boxes of an older prediction) the boxes decide.
    boxes_only = [{k: v for k, v in b.items() if k != "mask"} for b in predicted]
    assert compare_boxes(boxes_only, redrawn).kept == 1


def test_stats_of_a_mask_project_leave_smart_tool_prompts_out(sqlite_store: Store, webhook) -> None:
    store = sqlite_store
    full, frame, _ = _masks()
    store.predictions.save(project_id=1, task_id=1, image_url="/a.png", model_version="v1", params_key="k",
                           result=[brush("cat", full)], score=0.9)
    store.predictions.save(project_id=1, task_id=2, image_url="/b.png", model_version="v1", params_key="k",
                           result=[brush("cat", full)], score=0.9)
    prompt = {**region("cat", 10, 10, 70, 50, size=(80, 60)), "from_name": "smart"}  # the box the annotator drew
    _annotate(store, webhook, 1, 1, [brush("cat", full), prompt])
    _annotate(store, webhook, 2, 2, [brush("cat", frame), prompt])
    store.projects.set_label_config(1, (
        '<View><Image name="image" value="$image"/>'
        '<BrushLabels name="brush" toName="image"><Label value="cat"/></BrushLabels>'
        '<RectangleLabels name="smart" toName="image" smart="true"><Label value="cat"/></RectangleLabels></View>'))

    stats = correction_stats(store, 1)["v1"].as_dict()

    assert set(stats["controls"]) == {"brush"}
    assert (stats["kept"], stats["deleted"], stats["added"], stats["final"]) == (1, 1, 1, 2)
