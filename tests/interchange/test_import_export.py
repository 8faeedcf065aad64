"""Pascal VOC and CSV in, COCO and VOC out, on real files: what lands in the store, what is skipped and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from active_learning.training.dataset import build_dataset
from active_learning.images import ImageCache
from active_learning.labelstudio.config import parse_classes
from model import ClassSpec
from active_learning.tools.export import export_project
from active_learning.tools.importing import InterchangeError, import_csv, import_voc, imported_id
from backend.cli import main
from tests.support.datasets import voc_xml, write_png

CLASSES = parse_classes("with_mask,without_mask(bare face)")
SIZE = (64, 48)


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    """The face-mask dataset's layout, ``annotations/`` beside ``images/``, with one bad thing of each kind."""
    root = tmp_path / "voc"
    for i, name in enumerate(["good", "empty", "unknown_only", "broken"]):
        write_png(root / "images" / f"{name}.png", SIZE, seed=i)
    files = {
        "good": voc_xml("good.png", SIZE, [
            ("with_mask", (11, 11, 30, 20)),       # 1-based: pixels 10..30 -> [10, 10, 30, 20]
            ("without_mask", (41, 5, 65, 49)),     # 1 px past the right and bottom edges: clipped
            ("zebra", (1, 1, 5, 5)),               # unknown class
            ("with_mask", (100, 100, 140, 140)),   # outside the 64x48 image
        ]),
        "empty": voc_xml("empty.png", SIZE, []),   # says outright: nothing here
        "unknown_only": voc_xml("unknown_only.png", SIZE, [("zebra", (1, 1, 5, 5))]),
        "missing": voc_xml("missing.png", SIZE, [("with_mask", (1, 1, 5, 5))]),
        "broken": "<annotation><object><name>with_mask</name>",
    }
    for name, text in files.items():
        (root / "annotations" / f"{name}.xml").parent.mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{name}.xml").write_text(text)
    return root


def _reasons(report) -> dict[str, str]:
    return {skip.where: skip.reason for skip in report.skipped}


def test_voc_import_stores_tasks_and_reports_every_skip(store, cache, voc_dir):
    report = import_voc(store, cache, 7, voc_dir, classes=CLASSES)

    assert (report.new, report.updated, report.unchanged) == (2, 0, 0)
    assert (report.boxes, report.clipped) == (2, 1)
    assert _reasons(report) == {
        "annotations/good.xml object 3": "unknown class",
        "annotations/good.xml object 4": "box outside the image",
        "annotations/unknown_only.xml object 1": "unknown class",
        "annotations/missing.xml": "missing image file",
        "annotations/broken.xml": "unreadable XML",
    }
    assert "5 skipped: 2 unknown class, 1 " in report.summary()

    tasks = {Path(t.data["imported_from"]).name: t for t in map(store.tasks.get, store.tasks.ids(7))}
    assert set(tasks) == {"good.png", "empty.png"}
    good = tasks["good.png"]
    assert good.id < 0 and good.id == imported_id(7, good.image_url)
    assert good.image_url.startswith("import://") and (good.width, good.height) == SIZE
    boxes = {b["label"]: b["box"] for b in store.annotations.get(good.id).boxes}
    assert boxes["with_mask"] == pytest.approx([10, 10, 30, 20], abs=0.01)
    assert boxes["without_mask"] == pytest.approx([40, 4, 64, 48], abs=0.01)
    assert store.annotations.get(tasks["empty.png"].id).boxes == []
    assert store.projects.schema(7).control("label").classes[1] == ClassSpec("without_mask", ("bare face",))


def test_reimport_is_idempotent_and_picks_up_changed_labels(store, cache, voc_dir):
    import_voc(store, cache, 7, voc_dir, classes=CLASSES)
    ids = store.tasks.ids(7)

    again = import_voc(store, cache, 7, voc_dir)  # the project knows its classes now
    assert (again.new, again.updated, again.unchanged) == (0, 0, 2)
    assert store.tasks.ids(7) == ids
    assert len(store.annotations.of_project(7)) == 2

    (voc_dir / "annotations" / "empty.xml").write_text(voc_xml("empty.png", SIZE, [("with_mask", (1, 1, 9, 9))]))
    changed = import_voc(store, cache, 7, voc_dir)
    assert (changed.new, changed.updated, changed.unchanged) == (0, 1, 1)
    assert store.tasks.ids(7) == ids


def test_voc_beside_its_images_and_duplicates(store, cache, tmp_path):
    """The other common layout: XML files next to their images (found by the XML's name when <filename> is wrong)."""
    flat = tmp_path / "flat"
    write_png(flat / "a.png", SIZE, seed=1)
    (flat / "copy.png").write_bytes((flat / "a.png").read_bytes())
    (flat / "a.xml").write_text(voc_xml("renamed-since.jpg", SIZE, [("with_mask", (1, 1, 10, 10))]))
    (flat / "copy.xml").write_text(voc_xml("copy.png", SIZE, [("with_mask", (1, 1, 10, 10))]))

    report = import_voc(store, cache, 7, flat, classes=CLASSES)

    assert report.new == 1
    assert _reasons(report) == {"copy.xml": "duplicate image"}
    assert "same content as a.xml" in report.summary()


def test_classes_are_the_projects(store, cache, voc_dir):
    with pytest.raises(InterchangeError, match="no classes in the store"):
        import_voc(store, cache, 8, voc_dir)
    import_voc(store, cache, 8, voc_dir, classes=CLASSES)
    with pytest.raises(InterchangeError, match="already has the classes with_mask, without_mask"):
        import_voc(store, cache, 8, voc_dir, classes=parse_classes("cat,dog"))


def test_csv_import(store, cache, tmp_path):
    images = tmp_path / "pics"
    write_png(images / "a.png", SIZE, seed=10)
    write_png(images / "b.png", SIZE, seed=11)
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text(
        "label_name,bbox_x1,bbox_y1,bbox_x2,bbox_y2,image_name,image_width,image_height\n"
        "with_mask,1,2,20,30,a.png,64,48\n"                 # line 2: good
        "without_mask,30,10,60,40,a.png,64,48\n"            # line 3: good
        "with_mask,x,2,20,30,a.png,64,48\n"                 # line 4: not a number
        "cat,1,2,20,30,a.png,64,48\n"                       # line 5: unknown class
        "with_mask,20,2,10,30,a.png,64,48\n"                # line 6: x2 < x1
        "with_mask,1,2,20,30,b.png,128,96\n"                # line 7: b.png is 64x48, not 128x96
        "with_mask,1,2,20,30,gone.png,64,48\n"              # line 8: no such file
    )
    report = import_csv(store, cache, 9, csv_file, images, classes=CLASSES)

    assert (report.new, report.boxes) == (1, 2)
    assert _reasons(report) == {
        "boxes.csv:4": "bad row",
        "boxes.csv:5": "unknown class",
        "boxes.csv:6": "empty box",
        "boxes.csv:7": "size mismatch",
        "boxes.csv:8": "missing image file",
    }
    [task] = store.tasks.labeled(9)
    assert sorted((b["label"], b["box"]) for b in task.boxes) == [
        ("with_mask", pytest.approx([1, 2, 20, 30], abs=0.01)),
        ("without_mask", pytest.approx([30, 10, 60, 40], abs=0.01)),
    ]


def test_csv_without_the_columns_is_refused(store, cache, tmp_path):
    (tmp_path / "bad.csv").write_text("label,x1\ncat,1\n")
    with pytest.raises(InterchangeError, match="missing column"):
        import_csv(store, cache, 9, tmp_path / "bad.csv", tmp_path, classes=CLASSES)


def test_imported_data_is_a_training_dataset(store, settings, voc_dir):
    import_voc(store, ImageCache(settings), 7, voc_dir, classes=CLASSES)

    # A fresh cache, whose fetcher refuses import:// URLs: the images must come from disk.
    dataset = build_dataset(store, ImageCache(settings), 7, val_fraction=0.5, val_min=1)

    assert dataset.skipped == []
    assert [c.name for c in dataset.classes] == ["with_mask", "without_mask"]
    examples = dataset.train + dataset.validation
    assert len(examples) == 2 and len(dataset.validation) >= 1
    by_count = sorted(examples, key=lambda e: len(e.targets))
    assert len(by_count[0].targets) == 0
    assert by_count[1].image.size == SIZE
    assert by_count[1].targets.class_id.tolist() == [0, 1]
    np.testing.assert_allclose(by_count[1].targets.xyxy, [[10, 10, 30, 20], [40, 4, 64, 48]], atol=0.01)


@pytest.mark.parametrize("fmt", ["coco", "voc"])
def test_export_round_trips(store, cache, voc_dir, tmp_path, fmt):
    import_voc(store, cache, 7, voc_dir, classes=CLASSES)
    out = tmp_path / "export"

    report = export_project(store, cache, 7, out, fmt)

    assert (report.images, report.boxes, report.skipped) == (2, 2, [])
    if fmt == "coco":
        read = sv.DetectionDataset.from_coco(str(out / "images"), str(out / "annotations.json"))
        assert {c["name"] for c in json.loads((out / "annotations.json").read_text())["categories"]} == \
            {"with_mask", "without_mask"}
    else:
        read = sv.DetectionDataset.from_pascal_voc(str(out / "images"), str(out / "annotations"))
    # every image is named <task id>_<original name>
    task_ids = {Path(t.data["imported_from"]).name: t.id for t in map(store.tasks.get, store.tasks.ids(7))}
    names = {original: f"{task_id}_{original}" for original, task_id in task_ids.items()}
    boxes = {Path(path).name: detections for path, detections in read.annotations.items()}
    assert set(boxes) == set(names.values())
    assert len(boxes[names["empty.png"]]) == 0
    good = boxes[names["good.png"]]
    assert [read.classes[i] for i in good.class_id] == ["with_mask", "without_mask"]
    np.testing.assert_allclose(good.xyxy, [[10, 10, 30, 20], [40, 4, 64, 48]], atol=0.01)
    assert (out / "images" / names["good.png"]).read_bytes() == (voc_dir / "images" / "good.png").read_bytes()
    if fmt == "coco":  # and carries its task id and original name
        images = json.loads((out / "annotations.json").read_text())["images"]
        assert {(i["file_name"], i["label_studio_task_id"], i["original_file_name"]) for i in images} == \
            {(names[original], task_id, original) for original, task_id in task_ids.items()}


def test_export_names_label_studio_images_by_their_file(store, cache, tmp_path):
    """A task that came from Label Studio is named by its id and its upload's file name (Label Studio's prefix
    removed); its image is read from the cache."""
    from active_learning.labelstudio.records import parse_annotation, parse_task

    image = write_png(tmp_path / "x.png", SIZE, seed=5)
    url = "/data/upload/3/8d2f1c0a-street.png"
    cache.put(url, image.read_bytes())
    store.projects.set_label_config(3, "".join(["<View><Image name='image' value='$image'/>",
                                     "<RectangleLabels name='label' toName='image'><Label value='car'/>",
                                     "</RectangleLabels></View>"]))
    task = parse_task({"id": 12, "project": 3, "data": {"image": url}}, 3)
    result = [{"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": 64,
               "original_height": 48, "value": {"x": 25, "y": 50, "width": 50, "height": 25,
                                                "rectanglelabels": ["car"]}}]
    annotation = parse_annotation({"id": 40, "task": 12, "project": 3, "result": result,
                                   "updated_at": "2026-11-21T10:00:00Z"}, 3)
    store.annotations.save(None, task, annotation)

    export_project(store, cache, 3, tmp_path / "out", "voc")

    read = sv.DetectionDataset.from_pascal_voc(str(tmp_path / "out" / "images"), str(tmp_path / "out" / "annotations"))
    [(path, detections)] = read.annotations.items()
    assert Path(path).name == "12_street.png"
    np.testing.assert_allclose(detections.xyxy, [[16, 24, 48, 36]])


def test_cli_import_and_export(tmp_path, voc_dir, capsys):
    data = ["--data-dir", str(tmp_path / "cli-data")]
    assert main(["import", "--project", "3", "--voc", str(voc_dir), "--classes", "with_mask,without_mask", *data]) == 0
    out = capsys.readouterr().out
    assert "2 images imported (2 new, 0 updated, 0 unchanged)" in out
    assert "annotations/broken.xml: unreadable XML" in out

    assert main(["import", "--project", "4", "--voc", str(voc_dir), *data]) == 1
    assert "--classes" in capsys.readouterr().err

    assert main(["export", "--project", "3", "--format", "coco", "--out", str(tmp_path / "out"), *data]) == 0
    assert "2 images, 2 boxes exported" in capsys.readouterr().out
    assert (tmp_path / "out" / "annotations.json").is_file()


MIXED_CONFIG = ('<View><Image name="image" value="$image"/>'
                '<RectangleLabels name="label" toName="image"><Label value="car"/></RectangleLabels>'
                '<BrushLabels name="brush" toName="image"><Label value="car"/><Label value="road"/></BrushLabels>'
                '<KeyPointLabels name="click" toName="image" smart="true"><Label value="road"/></KeyPointLabels>'
                '<RectangleLabels name="smartbox" toName="image" smart="true"><Label value="road"/></RectangleLabels>'
                '</View>')


def _mask_project(store, cache, tmp_path):
    """Project 5, one Label Studio task on a 64x48 image: a rectangle, a brush mask, and two smart-tool prompts (a
    click, a box). Returns the brush mask."""
    from label_studio_sdk.converter.brush import mask2rle

    from active_learning.labelstudio.records import parse_annotation, parse_task

    image = write_png(tmp_path / "m.png", SIZE, seed=6)
    url = "/data/upload/5/0a1b2c3d-road.png"
    cache.put(url, image.read_bytes())
    store.projects.set_label_config(5, MIXED_CONFIG)
    mask = np.zeros((SIZE[1], SIZE[0]), dtype=bool)
    mask[20:40, 5:60] = True
    mask[30:40, 30:45] = False  # a notch: not its bounding box
    common = {"to_name": "image", "original_width": SIZE[0], "original_height": SIZE[1]}
    result = [
        {**common, "type": "rectanglelabels", "from_name": "label",
         "value": {"x": 25, "y": 50, "width": 50, "height": 25, "rectanglelabels": ["car"]}},
        {**common, "type": "brushlabels", "from_name": "brush",
         "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["road"]}},
        {**common, "type": "keypointlabels", "from_name": "click",
         "value": {"x": 50, "y": 60, "width": 1, "keypointlabels": ["road"]}},
        {**common, "type": "rectanglelabels", "from_name": "smartbox",
         "value": {"x": 5, "y": 40, "width": 90, "height": 45, "rectanglelabels": ["road"]}},
    ]
    task = parse_task({"id": 21, "project": 5, "data": {"image": url}}, 5)
    annotation = parse_annotation({"id": 50, "task": 21, "project": 5, "result": result,
                                   "updated_at": "2026-11-21T10:00:00Z"}, 5)
    store.annotations.save(None, task, annotation)
    return mask


def test_coco_export_carries_brush_masks_beside_boxes(store, cache, tmp_path):
    from pycocotools import mask as coco_mask

    mask = _mask_project(store, cache, tmp_path)

    report = export_project(store, cache, 5, tmp_path / "out", "coco")

    assert (report.images, report.boxes, report.skipped) == (1, 2, [])  # the smart tools' prompts: not exported
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_name = {names[a["category_id"]]: a for a in coco["annotations"]}
    assert set(by_name) == {"label/car", "road"}  # "car" is a label of both controls
    car, road = by_name["label/car"], by_name["road"]
    assert car["segmentation"] == [] and car["bbox"] == [16, 24, 32, 12]  # a box stays a box
    rle = road["segmentation"]
    assert rle["size"] == [SIZE[1], SIZE[0]] and isinstance(rle["counts"], str) and road["iscrowd"] == 0
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    np.testing.assert_array_equal(decoded, mask)
    assert road["area"] == mask.sum() == 55 * 20 - 15 * 10
    assert road["bbox"] == [5, 20, 55, 20]


def test_voc_export_of_a_mask_project_writes_boxes(store, cache, tmp_path):
    _mask_project(store, cache, tmp_path)

    export_project(store, cache, 5, tmp_path / "out", "voc")

    read = sv.DetectionDataset.from_pascal_voc(str(tmp_path / "out" / "images"), str(tmp_path / "out" / "annotations"))
    [(_, detections)] = read.annotations.items()
    assert sorted(read.classes[i] for i in detections.class_id) == ["label/car", "road"]
    np.testing.assert_allclose(sorted(detections.xyxy.tolist()), [[5, 20, 60, 40], [16, 24, 48, 36]], atol=1)


def test_brush_annotations_train_on_their_mask_box_and_prompts_are_left_out(store, cache, tmp_path):
    _mask_project(store, cache, tmp_path)

    dataset = build_dataset(store, cache, 5, val_fraction=0.0, val_min=0)

    assert dataset.skipped == []  # the prompts are not reported as unknown boxes either
    assert [c.name for c in dataset.classes] == ["car", "road"]  # what the detector trains on: labels once
    [example] = dataset.train
    assert sorted(zip(example.targets.class_id.tolist(), example.targets.xyxy.tolist())) == [
        (0, [16.0, 24.0, 48.0, 36.0]), (1, [5.0, 20.0, 60.0, 40.0])]


def test_export_without_a_label_config_names_every_control(store, cache, tmp_path):
    with pytest.raises(InterchangeError, match="has no <RectangleLabels>, <BrushLabels> or <PolygonLabels>"):
        export_project(store, cache, 99, tmp_path / "out", "coco")
