"""``groundloop export``: a project's current human boxes (what training uses) as COCO or Pascal VOC.

Writes ``out/images/`` plus ``out/annotations.json`` (COCO) or ``out/annotations/*.xml`` (VOC), through
supervision's dataset writers. Categories are the schema's (control, label) pairs (``ProjectSchema.categories``):
named by the label alone unless two controls share it (``control/label`` then), so the boxes of every control are
exported. Each image is named ``<task id>_<original name>`` (the name it was uploaded or imported under; Label
Studio's upload prefix removed), and a COCO image also carries ``label_studio_task_id`` and ``original_file_name``,
so every exported image leads back to its task. Images are written as cached (EXIF kept: readers that honour it,
as supervision and OpenCV do, see the boxes' frame).

Brush and polygon annotations (stored with a mask) carry their mask in COCO as ``segmentation``: the stored COCO
compressed RLE (``{"size": [h, w], "counts": str}``, ``iscrowd`` 0, ``area`` the mask's pixels), their ``bbox``
the mask's bounding box; box annotations keep an empty ``segmentation``, so an image may mix both. Pascal VOC has
no masks: it gets every annotation's box. Regions of smart tools (prompts for the segmenter) are not exported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import supervision as sv
from PIL import Image

from active_learning.images import ImageCache, ImageError
from active_learning.progress import progress
from active_learning.store import LabeledTask, Store
from active_learning.tools import EXPORT_FORMATS, IMAGE_EXTENSIONS
from active_learning.tools.importing import InterchangeError, Skip, skip_lines

UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
"""Label Studio stores an upload ``photo.png`` as ``/data/upload/<project>/<8 hex>-photo.png``."""


@dataclass
class ExportReport:
    images: int = 0
    boxes: int = 0
    skipped: list[Skip] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join([f"{self.images} images, {self.boxes} boxes exported", *skip_lines(self.skipped)])


def export_project(store: Store, cache: ImageCache, project_id: int, out_dir: Path, fmt: str) -> ExportReport:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    schema = store.projects.schema(project_id)
    if schema is None:
        raise InterchangeError(f"project {project_id} has no <RectangleLabels>, <BrushLabels> or <PolygonLabels> in "
                               "the store: run `groundloop sync --project N` first")
    categories = schema.categories
    index = {(c.control, c.label): i for i, c in enumerate(categories)}
    out_dir, report = Path(out_dir), ExportReport()
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    paths, annotations, originals, masks = [], {}, {}, {}
    for task in progress(store.tasks.labeled(project_id), "exporting", "image"):
        try:
            image = cache.get(task.image_url)
        except ImageError as exc:
            report.skipped.append(Skip(f"task {task.task_id}", "image unavailable", str(exc)))
            continue
        boxes, class_ids, image_masks = [], [], []
        for box in schema.label_boxes(task.boxes):
            category = index.get((box.get("from_name"), box["label"]))
            if category is None:
                report.skipped.append(Skip(f"task {task.task_id}", "unknown class",
                                           f"{box['label']!r} of control {box.get('from_name')!r}"))
                continue
            boxes.append(box["box"])
            class_ids.append(category)
            image_masks.append(box.get("mask"))
        cached = cache.path_for(image.sha256)
        original = original_name(task, cached)
        path = images_dir / f"{task.task_id}_{original}"
        path.write_bytes(cached.read_bytes())
        paths.append(str(path))
        originals[path.name] = (task.task_id, original)
        masks[path.name] = image_masks
        annotations[str(path)] = sv.Detections(xyxy=np.array(boxes, dtype=float).reshape(-1, 4),
                                               class_id=np.array(class_ids, dtype=int))
        report.images += 1
        report.boxes += len(boxes)
    dataset = sv.DetectionDataset(classes=[c.name for c in categories], images=paths, annotations=annotations)
    if fmt == "coco":
        coco_file = out_dir / "annotations.json"
        dataset.as_coco(annotations_path=str(coco_file))
        _add_task_ids(coco_file, originals, masks)
    else:
        dataset.as_pascal_voc(annotations_directory_path=str(out_dir / "annotations"))
    return report


def original_name(task: LabeledTask, cached: Path) -> str:
    """The name the image was uploaded or imported under, else the URL's last part (with its format's extension)."""
    url = urlparse(task.data.get("imported_from") or task.image_url)
    name = Path(unquote(parse_qs(url.query).get("d", [url.path])[0])).name  # local files: ?d=dir/x.png
    name = UPLOAD_PREFIX.sub("", name) if "/data/upload/" in url.path else name
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        with Image.open(cached) as image:
            extension = "jpg" if image.format == "JPEG" else str(image.format).lower()
        name = f"{Path(name).stem or 'image'}.{extension}"
    return name


def _add_task_ids(coco_file: Path, originals: dict[str, tuple[int, str]],
                  masks: dict[str, list[dict | None]] | None = None) -> None:
    """Each image's task id and original name; each mask annotation's stored RLE as its ``segmentation``.

    supervision writes one annotation per detection, in the image's detection order (``masks[file_name]``'s)."""
    from pycocotools import mask as coco_mask

    coco = json.loads(coco_file.read_text())
    by_image: dict[int, list[dict]] = {}
    for annotation in sorted(coco["annotations"], key=lambda a: a["id"]):
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for image in coco["images"]:
        task_id, original = originals[image["file_name"]]
        image.update(label_studio_task_id=task_id, original_file_name=original)
        stored = (masks or {}).get(image["file_name"], [])
        written = by_image.get(image["id"], [])
        if masks is not None and len(stored) != len(written):
            raise RuntimeError(f"{image['file_name']}: supervision wrote {len(written)} annotations for "
                               f"{len(stored)} boxes")
        for annotation, mask in zip(written, stored):
            if mask is not None:
                rle = {"size": list(mask["size"]), "counts": mask["counts"]}
                annotation.update(segmentation=rle, area=float(coco_mask.area(rle)), iscrowd=0)
    coco_file.write_text(json.dumps(coco))
