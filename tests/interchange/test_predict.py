"""``groundloop predict`` on a folder of synthetic images with the offline small model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from active_learning.labelstudio.config import parse_label_config
from backend.cli import main
from model import Detector
from model.synthetic import make_shapes_image

CLASSES = "red square,blue circle(blue disc),green triangle"
NAMES = {"red square", "blue circle", "green triangle"}


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "shapes"
    folder.mkdir()
    rng = random.Random(0)
    for i in range(3):
        make_shapes_image(rng, size=96).image.save(folder / f"shape{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_writes_tasks_coco_and_previews_and_resumes(images_dir, tmp_path, small_model_dir, capsys,
                                                             monkeypatch):
    out = tmp_path / "out"
    argv = ["predict", str(images_dir), "--classes", CLASSES, "--out", str(out), "--model", str(small_model_dir),
            "--box-threshold", "0.05", "--text-threshold", "0.0", "--max-detections", "5",
            "--data-dir", str(tmp_path / "data")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 images pre-labeled (3 predicted now, 0 from an earlier run)" in printed

    # The Label Studio import file: one task per image, rectangles of our classes fitting the printed config.
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=shapes/shape{i}.png" for i in range(3)]
    config = parse_label_config((out / "label_config.xml").read_text())
    control = config.controls[0]
    assert {c.name for c in control.classes} == NAMES
    assert (out / "label_config.xml").read_text() in printed
    regions = []
    for task in tasks:
        [prediction] = task["predictions"]
        assert set(prediction) == {"model_version", "score", "result"}
        assert prediction["model_version"].startswith(small_model_dir.name + "-")
        assert 0.0 <= prediction["score"] <= 1.0
        regions += prediction["result"]
    assert regions, "the low thresholds should give boxes"
    for region in regions:
        assert (region["from_name"], region["to_name"], region["type"]) == (control.name, config.image_name,
                                                                          "rectanglelabels")
        assert region["value"]["rectanglelabels"][0] in NAMES
        assert (region["original_width"], region["original_height"]) == (96, 96)

    # COCO: the same boxes, readable with supervision against the images folder.
    coco = sv.DetectionDataset.from_coco(str(images_dir), str(out / "coco.json"))
    assert sorted(Path(p).name for p in coco.image_paths) == ["shape0.png", "shape1.png", "shape2.png"]
    assert sum(len(d) for d in coco.annotations.values()) == len(regions)

    # Previews: the images with their boxes drawn.
    for i, task in enumerate(tasks):
        preview = np.asarray(Image.open(out / "previews" / f"shape{i}.png").convert("RGB"))
        original = np.asarray(Image.open(images_dir / f"shape{i}.png").convert("RGB"))
        assert preview.shape == original.shape
        assert (preview != original).any() == bool(task["predictions"][0]["result"])

    # A second run has nothing to do: it does not even load the model, and rewrites nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(Detector, "load", classmethod(lambda *a, **k: pytest.fail("loaded the model again")))
    assert main(argv) == 0
    assert "3 images pre-labeled (0 predicted now, 3 from an earlier run)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes

    # A run interrupted before an image's prediction file was written redoes that image alone.
    monkeypatch.undo()
    (out / "predictions" / "shape1.png.json").unlink()
    assert main(argv) == 0
    assert "3 images pre-labeled (1 predicted now, 2 from an earlier run)" in capsys.readouterr().out
    assert json.loads((out / "tasks.json").read_text()) == tasks


def test_predict_refuses_bad_classes(images_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["predict", str(images_dir), "--classes", "car(automobile", "--out", str(tmp_path / "o")])
    assert "NAME(alias|alias)" in capsys.readouterr().err
