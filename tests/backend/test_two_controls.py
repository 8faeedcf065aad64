"""A label config with TWO ``<RectangleLabels>`` on one image ("objects" and "damage"): served, trained, counted and
exported alike, first through the Flask app on the small model, then end to end against a real Label Studio with
the real server (``groundloop serve``) and a real training round (``groundloop train``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from active_learning.images import ImageCache
from active_learning.reports.corrections import correction_stats
from active_learning.store import Store
from active_learning.tools.export import export_project
from active_learning.training.dataset import build_dataset
from tests.support.backend import groundloop_serve, png_bytes, wait_for

TWO_CONTROLS = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="objects" toName="image"><Label value="car"/><Label value="person"/></RectangleLabels>'
    '<RectangleLabels name="damage" toName="image"><Label value="dent"/><Label value="scratch"/></RectangleLabels>'
    "</View>"
)
LABELS = {"objects": {"car", "person"}, "damage": {"dent", "scratch"}}


def region(control: str, label: str, x: float, y: float, w: float, h: float, size: tuple[int, int]) -> dict:
    return {"from_name": control, "to_name": "image", "type": "rectanglelabels", "original_width": size[0],
            "original_height": size[1], "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                                                  "rectanglelabels": [label]}}


def test_predict_answers_regions_for_every_control(make_client, store):
    client, _ = make_client(max_detections=40)
    tasks = [{"id": i, "data": {"image": f"/data/upload/9/{i}.png"}} for i in range(1, 4)]
    answer = client.post("/predict", json={"tasks": tasks, "label_config": TWO_CONTROLS, "project": "9.1"})
    assert answer.status_code == 200
    regions = [r for prediction in answer.json["results"] for r in prediction["result"]]
    assert {r["from_name"] for r in regions} == {"objects", "damage"}
    for r in regions:
        assert r["value"]["rectanglelabels"][0] in LABELS[r["from_name"]]
        assert r["to_name"] == "image"


def test_training_export_and_corrections_read_both_controls(settings, store, media, tmp_path):
    size = (64, 48)
    store.projects.set_label_config(9, TWO_CONTROLS)
    for task_id in range(1, 5):
        result = [region("objects", "car", 10, 10, 40, 40, size), region("damage", "dent", 50, 50, 30, 30, size)]
        store.ingest({"action": "ANNOTATION_CREATED", "project": {"id": 9},
                      "task": {"id": task_id, "project": 9, "data": {"image": f"/data/upload/9/{task_id}.png"}},
                      "annotation": {"id": 100 + task_id, "task": task_id, "project": 9, "result": result,
                                     "updated_at": "2026-12-01T10:00:00Z",
                                     "prediction": {"model_version": "v1", "result": [result[0]]}}})
    cache = ImageCache(settings)

    dataset = build_dataset(store, cache, 9, val_fraction=0.25, val_min=1)
    names = [c.name for c in dataset.classes]
    assert names == ["car", "person", "dent", "scratch"]
    trained = {names[i] for example in dataset.train + dataset.validation for i in example.targets.class_id}
    assert trained == {"car", "dent"}  # the boxes of both controls

    [summary] = correction_stats(store, 9).values()
    assert summary.by_control["objects"].kept == 4 and summary.by_control["damage"].added == 4
    assert summary.changes.kept == 4 and summary.changes.added == 4

    report = export_project(store, cache, 9, tmp_path / "coco", "coco")
    assert (report.images, report.boxes, report.skipped) == (4, 8, [])
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    assert sorted(categories[a["category_id"]] for a in coco["annotations"]) == ["car"] * 4 + ["dent"] * 4
    assert sorted(i["label_studio_task_id"] for i in coco["images"]) == [1, 2, 3, 4]


IMAGE_SIZES = [(64, 48), (80, 60), (50, 70), (72, 72), (60, 40), (48, 64)]


@pytest.mark.labelstudio
@pytest.mark.slow
def test_two_controls_end_to_end(label_studio, small_model_dir, tmp_path):
    ls = label_studio
    data_dir = tmp_path / "backend"
    data_dir.mkdir()
    flags = ["--model", str(small_model_dir), "--box-threshold", "0.0", "--text-threshold", "0.0",
             "--max-detections", "40", "--label-studio-url", ls.url, "--label-studio-api-key", ls.api_key]
    with groundloop_serve(data_dir, "--no-worker", *flags) as server:
        pid = ls.api("POST", "/api/projects", json={"title": "two controls", "label_config": TWO_CONTROLS}).json()["id"]
        files = {f"f{i}": (f"car{i}.png", png_bytes(size, 20 + i), "image/png") for i, size in enumerate(IMAGE_SIZES)}
        ls.api("POST", f"/api/projects/{pid}/import", files=files)
        tasks = ls.api("GET", f"/api/tasks?project={pid}&fields=all").json()["tasks"]
        ml = ls.api("POST", "/api/ml", json={"url": server.url, "project": pid, "title": "groundloop"}).json()
        assert ml["readable_state"] == "Connected", ml

        # Retrieve predictions: both controls pre-annotated, each with its own labels
        ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
               json={"selectedItems": {"all": True, "excluded": []}})
        predictions = ls.api("GET", f"/api/predictions?project={pid}").json()
        assert len(predictions) == len(tasks)
        regions = [r for p in predictions for r in p["result"]]
        assert {r["from_name"] for r in regions} == {"objects", "damage"}
        assert all(r["value"]["rectanglelabels"][0] in LABELS[r["from_name"]] for r in regions)

        # annotators label both controls on every task; the webhooks reach the store
        store = Store(f"sqlite:///{(data_dir / 'groundloop.db').resolve()}")
        for i, (task, size) in enumerate(zip(tasks, IMAGE_SIZES)):
            result = [region("objects", "car", 5 + i, 10, 40, 30, size), region("damage", "dent", 50, 40 + i, 25, 20, size),
                      region("damage", "scratch", 10, 60, 30, 10 + i, size)]
            ls.api("POST", f"/api/tasks/{task['id']}/annotations", json={"result": result})
        wait_for(lambda: len(store.tasks.labeled(pid)) == len(tasks), timeout=30, what="annotation webhooks")

    # a real training round learns the boxes of both controls
    groundloop = str(Path(sys.executable).parent / "groundloop")
    common = ["--data-dir", str(data_dir), "--model", str(small_model_dir), "--device", "cpu",
              "--label-studio-url", ls.url, "--label-studio-api-key", ls.api_key]
    done = subprocess.run([groundloop, "train", "--project", str(pid), "--epochs", "1", "--image-size", "64", *common],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = store.runs.of_project(pid)
    assert run.status in ("succeeded", "rejected") and run.train_size + run.val_size == len(tasks)
    candidate = store.models.get(run.model_version)
    assert set(candidate.metrics["val"]["per_class_ap"]) >= {"car", "dent", "scratch"}

    # the COCO export equals Label Studio's boxes of both controls, box for box
    out = tmp_path / "export"
    done = subprocess.run([groundloop, "export", "--project", str(pid), "--format", "coco", "--out", str(out), *common],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    coco = json.loads((out / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = {i["id"]: i for i in coco["images"]}
    exported = sorted((images[a["image_id"]]["label_studio_task_id"], names[a["category_id"]],
                       *(round(v, 1) for v in a["bbox"])) for a in coco["annotations"])
    expected = []
    for task in ls.api("GET", f"/api/tasks?project={pid}&fields=all").json()["tasks"]:
        [annotation] = task["annotations"]
        for r in annotation["result"]:
            w, h, v = r["original_width"], r["original_height"], r["value"]
            expected.append((task["id"], v["rectanglelabels"][0], round(v["x"] * w / 100, 1), round(v["y"] * h / 100, 1),
                             round(v["width"] * w / 100, 1), round(v["height"] * h / 100, 1)))
    assert len(exported) == len(expected) == 3 * len(tasks)
    for got, want in zip(exported, sorted(expected)):
        assert got[:2] == want[:2] and got[2:] == pytest.approx(want[2:], abs=0.15), (got, want)
    upload_names = {i["original_file_name"] for i in images.values()}
    assert upload_names == {f"car{i}.png" for i in range(len(tasks))}


def test_import_targets_a_named_control_and_keeps_the_others(settings, store, tmp_path):
    from PIL import Image

    from active_learning.tools.importing import InterchangeError, import_csv

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (90, 30, 200)).save(images / "a.png")
    header = "label_name,bbox_x1,bbox_y1,bbox_x2,bbox_y2,image_name,image_width,image_height\n"
    (tmp_path / "objects.csv").write_text(header + "car,1,2,30,20,a.png,64,48\n")
    (tmp_path / "damage.csv").write_text(header + "dent,10,10,20,20,a.png,64,48\nscratch,5,30,40,40,a.png,64,48\n")
    store.projects.set_label_config(9, TWO_CONTROLS)
    cache = ImageCache(settings)

    assert import_csv(store, cache, 9, tmp_path / "objects.csv", images).new == 1  # the first control by default
    report = import_csv(store, cache, 9, tmp_path / "damage.csv", images, control="damage")
    assert (report.new, report.updated, report.boxes) == (0, 1, 2)
    [task] = store.tasks.labeled(9)
    assert sorted((b["from_name"], b["label"]) for b in task.boxes) == [
        ("damage", "dent"), ("damage", "scratch"), ("objects", "car")]
    assert import_csv(store, cache, 9, tmp_path / "damage.csv", images, control="damage").unchanged == 1
    with pytest.raises(InterchangeError, match='no labels control name="wheels"'):
        import_csv(store, cache, 9, tmp_path / "damage.csv", images, control="wheels")
