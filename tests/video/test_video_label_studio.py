"""A video project in a real Label Studio 1.23.2 with the real server (``groundloop serve``): Retrieve predictions
gives each video task one prediction of tracks, and an annotator's video annotation reaches the store."""

from __future__ import annotations

import pytest

from active_learning.store import Store
from model.synthetic import write_shapes_video
from tests.support.backend import VIDEO, VIDEO_CONFIG, groundloop_serve, wait_for

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_a_video_project_gets_tracks_and_its_annotations_reach_the_store(label_studio, small_model_dir, tmp_path):
    ls = label_studio
    data_dir = tmp_path / "backend"
    data_dir.mkdir()
    videos = []
    for i in range(2):
        path = tmp_path / f"shapes{i}.mp4"
        write_shapes_video(path, seed=i, **VIDEO)
        videos.append(path)
    flags = ["--model", str(small_model_dir), "--box-threshold", "0.0", "--text-threshold", "0.0",
             "--max-detections", "3", "--image-size", "64", "--video-stride", "4",
             "--label-studio-url", ls.url, "--label-studio-api-key", ls.api_key]
    with groundloop_serve(data_dir, "--no-worker", *flags) as server:
        pid = ls.api("POST", "/api/projects", json={"title": "video", "label_config": VIDEO_CONFIG}).json()["id"]
        files = {f"f{i}": (path.name, path.read_bytes(), "video/mp4") for i, path in enumerate(videos)}
        ls.api("POST", f"/api/projects/{pid}/import", files=files)
        tasks = ls.api("GET", f"/api/tasks?project={pid}&fields=all").json()["tasks"]
        assert len(tasks) == 2 and all(t["data"]["video"].startswith("/data/upload/") for t in tasks)
        ml = ls.api("POST", "/api/ml", json={"url": server.url, "project": pid, "title": "groundloop"}).json()
        assert ml["readable_state"] == "Connected", ml

        ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
               json={"selectedItems": {"all": True, "excluded": []}})
        predictions = ls.api("GET", f"/api/predictions?project={pid}").json()
        assert sorted(p["task"] for p in predictions) == sorted(t["id"] for t in tasks)  # one per task
        regions = [r for p in predictions for r in p["result"]]
        assert regions, "threshold 0: the small model's boxes make tracks"
        for region in regions:
            assert region["type"] == "videorectangle" and region["from_name"] == "box"
            assert region["value"]["framesCount"] == VIDEO["frames"]
            assert region["value"]["sequence"][-1]["enabled"] is False

        # an annotator keeps one predicted track and draws one of their own
        store = Store(f"sqlite:///{(data_dir / 'groundloop.db').resolve()}")
        drawn = {"from_name": "box", "to_name": "video", "type": "videorectangle",
                 "value": {"framesCount": VIDEO["frames"], "duration": 2.0, "labels": ["red square"],
                           "sequence": [{"frame": 1, "enabled": True, "rotation": 0, "x": 0, "y": 12.5,
                                         "width": 20, "height": 30, "time": 1 / 12},
                                        {"frame": 24, "enabled": False, "rotation": 0, "x": 78, "y": 12.5,
                                         "width": 20, "height": 30, "time": 2.0}]}}
        task = tasks[0]
        kept = next(p for p in predictions if p["task"] == task["id"])["result"][:1]
        ls.api("POST", f"/api/tasks/{task['id']}/annotations", json={"result": [*kept, drawn]})
        [labeled] = wait_for(lambda: store.tasks.labeled(pid), timeout=30, what="the annotation webhook")
        assert labeled.image_url == task["data"]["video"]
        stored = [r for r in labeled.result if r["type"] == "videorectangle"]
        assert len(stored) == 1 + len(kept) and drawn["value"]["sequence"] in [r["value"]["sequence"] for r in stored]
