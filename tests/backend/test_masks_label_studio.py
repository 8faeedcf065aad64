"""A BrushLabels project end to end against a real Label Studio 1.23.2 and the real server (``groundloop serve``
with the tiny offline SAM as ``--segmenter``): Retrieve predictions gives every task one prediction of brush
masks, a brush annotation drawn through Label Studio's API reaches the store as a mask with its box, and the COCO
export carries its segmentation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from pycocotools import mask as coco_mask

from active_learning.store import Store
from tests.support.backend import groundloop_serve, png_bytes, wait_for

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

BRUSH = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="banana"/><Label value="orange"/></BrushLabels>'
    "</View>"
)
SIZES = [(64, 48), (80, 60), (50, 70)]


def brush_region(mask: np.ndarray, label: str) -> dict:
    height, width = mask.shape
    return {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": width,
            "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle((mask * 255).astype(np.uint8)), "brushlabels": [label]}}


def test_a_brush_project_is_pre_annotated_and_its_masks_reach_the_store_and_export(label_studio, small_model_dir,
                                                                                   small_segmenter_dir, tmp_path):
    ls = label_studio
    data_dir = tmp_path / "backend"
    data_dir.mkdir()
    flags = ["--model", str(small_model_dir), "--segmenter", str(small_segmenter_dir), "--box-threshold", "0.0",
             "--text-threshold", "0.0", "--max-detections", "5", "--label-studio-url", ls.url,
             "--label-studio-api-key", ls.api_key]
    with groundloop_serve(data_dir, "--no-worker", *flags) as server:
        pid = ls.api("POST", "/api/projects", json={"title": "brush", "label_config": BRUSH}).json()["id"]
        files = {f"f{i}": (f"fruit{i}.png", png_bytes(size, 40 + i), "image/png") for i, size in enumerate(SIZES)}
        ls.api("POST", f"/api/projects/{pid}/import", files=files)
        tasks = ls.api("GET", f"/api/tasks?project={pid}&fields=all").json()["tasks"]
        ml = ls.api("POST", "/api/ml", json={"url": server.url, "project": pid, "title": "groundloop"}).json()
        assert ml["readable_state"] == "Connected", ml

        ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
               json={"selectedItems": {"all": True, "excluded": []}})
        predictions = ls.api("GET", f"/api/predictions?project={pid}").json()
        assert sorted(p["task"] for p in predictions) == sorted(t["id"] for t in tasks)  # one per task
        regions = [r for p in predictions for r in p["result"]]
        assert regions and {r["type"] for r in regions} == {"brushlabels"}
        for r in regions:
            pixels = decode_rle(r["value"]["rle"])
            assert len(pixels) == r["original_width"] * r["original_height"] * 4
            assert r["value"]["brushlabels"][0] in {"banana", "orange"}

        # an annotator paints a rectangle-shaped stroke on each task
        store = Store(f"sqlite:///{(data_dir / 'groundloop.db').resolve()}")
        painted = {}
        for task in tasks:
            width, height = SIZES[int(task["data"]["image"].rsplit("fruit", 1)[1][0])]
            mask = np.zeros((height, width), dtype=bool)
            mask[5:25, 8:30] = True
            painted[task["id"]] = mask
            ls.api("POST", f"/api/tasks/{task['id']}/annotations", json={"result": [brush_region(mask, "banana")]})
        wait_for(lambda: len(store.tasks.labeled(pid)) == len(tasks), timeout=30, what="annotation webhooks")
        for labeled in store.tasks.labeled(pid):
            [box] = labeled.boxes
            assert box["label"] == "banana" and box["box"] == pytest.approx([8, 5, 30, 25], abs=0.01)
            assert (coco_mask.decode(box["mask"]).astype(bool) == painted[labeled.task_id]).all()

    out = tmp_path / "export"
    groundloop = str(Path(sys.executable).parent / "groundloop")
    done = subprocess.run([groundloop, "export", "--project", str(pid), "--format", "coco", "--out", str(out),
                           "--data-dir", str(data_dir), "--label-studio-url", ls.url,
                           "--label-studio-api-key", ls.api_key], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["annotations"]) == len(tasks)
    for annotation in coco["annotations"]:
        assert annotation["area"] == pytest.approx(20 * 22, rel=0.1) and annotation["segmentation"]
