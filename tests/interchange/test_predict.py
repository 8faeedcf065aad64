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


# Sharding: several processes or machines pre-label one folder into one --out, then --merge.


def _argv(images_dir: Path, out: Path, model_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["predict", str(images_dir), "--classes", CLASSES, "--out", str(out), "--model", str(model_dir),
            "--box-threshold", "0.05", "--text-threshold", "0.0", "--max-detections", "5",
            "--data-dir", str(tmp_path / "data"), *extra]


def _coco(path: Path) -> dict:
    """coco.json without what legitimately differs between two runs: supervision stamps each image with the time."""
    coco = json.loads(path.read_text())
    for image in coco["images"]:
        image.pop("date_captured")
    return coco


def _names(tasks: list[dict]) -> list[str]:
    return [t["data"]["image"].rsplit("/", 1)[-1] for t in tasks]


def test_shards_split_by_a_stable_hash_disjoint_and_covering():
    from active_learning.tools.prelabel import shard_of

    names = [f"img{i}.jpg" for i in range(300)]
    for count in (1, 2, 3, 7):
        split = {name: shard_of(name, count) for name in names}
        assert set(split.values()) == set(range(count))  # every shard gets images, each image exactly one shard
        shuffled = names[:]
        random.Random(count).shuffle(shuffled)
        assert {name: shard_of(name, count) for name in shuffled} == split  # independent of the listing order
    # sha256 of the relative path, not hash(): these are the same on every machine and every Python.
    assert [shard_of(f"shape{i}.png", 4) for i in range(6)] == [0, 2, 3, 1, 0, 0]
    assert shard_of("sub/x.png", 7) == 3


def test_sharded_predict_then_merge_equals_the_unsharded_run(images_dir, tmp_path, small_model_dir, capsys,
                                                             monkeypatch):
    (images_dir / "broken.png").write_bytes(b"not a png")  # skipped alike by the unsharded run and the merge
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert main(_argv(images_dir, whole, small_model_dir, tmp_path)) == 0
    capsys.readouterr()

    shard_names = []
    for index in (0, 1):
        assert main(_argv(images_dir, sharded, small_model_dir, tmp_path, "--shard", f"{index}/2")) == 0
        assert f"shard {index}/2: " in capsys.readouterr().out
        tasks = json.loads((sharded / f"tasks.shard-{index}-of-2.json").read_text())
        coco = _coco(sharded / f"coco.shard-{index}-of-2.json")
        assert sorted(i["file_name"] for i in coco["images"]) == _names(tasks)
        shard_names.append(_names(tasks))
    assert shard_names == [["shape0.png", "shape1.png"], ["shape2.png"]]  # disjoint, covering, both non-empty
    assert not (sharded / "tasks.json").exists() and not (sharded / "coco.json").exists()
    assert sorted(p.name for p in (sharded / "predictions").iterdir()) == [f"shape{i}.png.json" for i in range(3)]

    # The merge predicts nothing (no model loaded) and writes what the unsharded run wrote.
    monkeypatch.setattr(Detector, "load", classmethod(lambda *a, **k: pytest.fail("the merge loaded the model")))
    assert main(_argv(images_dir, sharded, small_model_dir, tmp_path, "--merge")) == 0
    printed = capsys.readouterr().out
    assert "3 images pre-labeled (0 predicted now, 3 from an earlier run)" in printed
    assert "skipped broken.png" in printed
    assert json.loads((sharded / "tasks.json").read_text()) == json.loads((whole / "tasks.json").read_text())
    assert _coco(sharded / "coco.json") == _coco(whole / "coco.json")
    assert (sharded / "label_config.xml").read_text() == (whole / "label_config.xml").read_text()
    assert sorted(p.name for p in sharded.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_a_shard_rerun_redoes_only_its_deleted_record(images_dir, tmp_path, small_model_dir, capsys, monkeypatch):
    rng = random.Random(1)
    for i in (3, 4):
        make_shapes_image(rng, size=96).image.save(images_dir / f"shape{i}.png")
    out = tmp_path / "out"
    argv = _argv(images_dir, out, small_model_dir, tmp_path, "--shard", "0/2")  # shape0, shape1 and shape4
    assert main(argv) == 0
    assert "3 images pre-labeled (3 predicted now, 0 from an earlier run)" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["shape0.png.json", "shape1.png.json",
                                                                       "shape4.png.json"]
    tasks = json.loads((out / "tasks.shard-0-of-2.json").read_text())

    monkeypatch.setattr(Detector, "load", classmethod(lambda *a, **k: pytest.fail("loaded the model again")))
    assert main(argv) == 0
    assert "3 images pre-labeled (0 predicted now, 3 from an earlier run)" in capsys.readouterr().out

    monkeypatch.undo()
    (out / "predictions" / "shape1.png.json").unlink()
    assert main(argv) == 0
    assert "3 images pre-labeled (1 predicted now, 2 from an earlier run)" in capsys.readouterr().out
    assert json.loads((out / "tasks.shard-0-of-2.json").read_text()) == tasks
    assert not (out / "predictions" / "shape2.png.json").exists()  # the other shard's images stay untouched


def test_merge_with_a_missing_shard_fails_naming_the_missing_images(images_dir, tmp_path, small_model_dir, capsys):
    out = tmp_path / "out"
    assert main(_argv(images_dir, out, small_model_dir, tmp_path, "--shard", "0/2")) == 0
    capsys.readouterr()
    assert main(_argv(images_dir, out, small_model_dir, tmp_path, "--merge")) == 1
    err = capsys.readouterr().err
    assert "1 of 3 images have no prediction yet" in err and "shape2.png" in err
    assert "shape0.png" not in err and "shape1.png" not in err
    assert not (out / "tasks.json").exists() and not (out / "coco.json").exists()

    # Records made with other settings do not count: a merge with another threshold misses every image.
    assert main(_argv(images_dir, out, small_model_dir, tmp_path, "--merge", "--box-threshold", "0.5")) == 1
    assert "3 of 3 images have no prediction yet" in capsys.readouterr().err


@pytest.mark.parametrize("value, message", [
    ("4/4", "I must be below N"), ("5/2", "I must be below N"), ("0/0", "N must be at least 1"),
    ("a/2", "expected I/N"), ("1", "expected I/N"), ("1/2/3", "expected I/N"), ("-1/2", "expected I/N"),
    ("", "expected I/N"), ("1.0/2", "expected I/N"),
])
def test_predict_refuses_bad_shards(images_dir, tmp_path, capsys, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(images_dir), "--classes", CLASSES, "--out", str(tmp_path / "o"), f"--shard={value}"])
    assert exit_.value.code == 2
    [last] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert last.startswith("groundloop predict: error: argument --shard: ") and message in last


def test_predict_refuses_shard_with_merge(images_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["predict", str(images_dir), "--classes", CLASSES, "--out", str(tmp_path / "o"), "--shard", "0/2",
              "--merge"])
    assert "not allowed with" in capsys.readouterr().err
