"""/predict on a video project, through the Flask app on the small model (random weights: only what holds for any
weights is asserted), the video streamed from the ``media`` fixture as from Label Studio."""

from __future__ import annotations

from active_learning.labelstudio.config import VIDEO_BOXES, parse_label_config
from tests.support.backend import VIDEO, VIDEO_CONFIG, wait_for

LABELS = {"red square", "blue circle"}
FRAMES_COUNT = VIDEO["frames"]  # the config's frameRate is the file's


def video_tasks(*names: str) -> list[dict]:
    return [{"id": i, "data": {"video": f"/data/upload/7/{name}"}} for i, name in enumerate(names, start=1)]


def predict(client, tasks):
    answer = client.post("/predict", json={"tasks": tasks, "label_config": VIDEO_CONFIG, "project": "7.1"})
    assert answer.status_code == 200, answer.json
    return answer.json["results"]


def assert_video_regions(prediction: dict, stride: int) -> None:
    assert 0.0 <= prediction["score"] <= 1.0
    for region in prediction["result"]:
        assert region["type"] == "videorectangle"
        assert (region["from_name"], region["to_name"]) == ("box", "video")
        value = region["value"]
        assert value["labels"][0] in LABELS
        assert value["framesCount"] == FRAMES_COUNT and abs(value["duration"] - 2.0) < 1e-6
        frames = [k["frame"] for k in value["sequence"]]
        assert frames == sorted(frames) and all((f - 1) % stride == 0 and 1 <= f <= FRAMES_COUNT for f in frames)
        assert value["sequence"][-1]["enabled"] is False
        for keyframe in value["sequence"]:
            assert all(0 <= keyframe[k] <= 100 for k in ("x", "y", "width", "height"))


def test_the_config_is_a_video_schema():
    schema = parse_label_config(VIDEO_CONFIG)
    assert schema.is_video and schema.framerate == 12.0
    assert (schema.image_name, schema.image_key) == ("video", "video")
    assert [c.kind for c in schema.controls] == [VIDEO_BOXES]
    assert {c.name for c in schema.controls[0].classes} == LABELS


def test_predict_answers_tracks_and_a_bad_video_costs_only_its_task(make_client, media):
    client, predictor = make_client(video_stride=3)
    results = predict(client, video_tasks("a.mp4", "broken.mp4", "b.mp4"))
    assert len(results) == 3
    assert results[1] == []  # no prediction for the missing video; the others have theirs
    for prediction in (results[0], results[2]):
        assert_video_regions(prediction, stride=3)
    assert results[0]["result"], "threshold 0: the small model's boxes make tracks"
    downloads = sum(1 for path in media.requests if path.endswith("/7/a.mp4"))

    again = predict(client, video_tasks("a.mp4"))  # from the store: no download, no detection
    assert again[0] == results[0]
    assert sum(1 for path in media.requests if path.endswith("/7/a.mp4")) == downloads
    assert predictor.metrics.snapshot()["cache_hits"] >= 1


def test_the_stride_is_part_of_the_cache_key(make_client, store):
    client, _ = make_client(video_stride=3)
    predict(client, video_tasks("c.mp4"))
    other, _ = make_client(video_stride=5)
    [prediction] = predict(other, video_tasks("c.mp4"))
    assert_video_regions(prediction, stride=5)
    assert len({row.params_key for row in store.predictions.served(1)}) == 2


def test_a_video_over_the_budget_is_finished_in_the_background(make_client, store):
    client, predictor = make_client(video_stride=2, predict_budget_seconds=0.0)
    assert predict(client, video_tasks("d.mp4")) == [[]]
    [row] = wait_for(lambda: store.predictions.served(1), timeout=120, what="the background prediction")
    assert_video_regions({"result": row.result, "score": row.score}, stride=2)
    assert predictor.metrics.snapshot()["skipped_over_budget"] == 1
