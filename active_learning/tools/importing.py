"""Seed labels into the store without Label Studio: Pascal VOC and CSV import.

Import turns every image of a dataset into a task with one annotation of project N (its boxes in
one ``<RectangleLabels>`` control, the first unless ``--control`` names another), exactly as if a human had
labeled it in Label Studio, so the first training round already has seed data. Decisions a newcomer needs:

* Ids. Label Studio numbers its tasks and annotations 1, 2, 3 ... in one sequence per installation, so imported
  ones are NEGATIVE and can never clash with them. A task's id is a hash of its project and the image's content
  (``imported_id``; 31 bits, as PostgreSQL's INTEGER holds; on the rare clash with another image, the next free id
  down), so importing the same image again lands on the same task and annotation (which share the number):
  re-imports never duplicate, changed labels update the annotation, and unchanged ones are not touched (they do
  not count as new corrections for the training trigger). Imported tasks live in the store only, not in Label
  Studio.
* Images. Their bytes go into the image cache under ``import://<sha256 of the bytes>``; the dataset code reads
  them with ``ImageCache.get(url)`` like any other image and never goes to the network for them.
* Boxes. Labels must be classes of the project (its label config in the store, or ``classes`` to create it). A box
  may stick out of the image by up to ``BOX_SLACK`` (annotation tools' off-by-one) and is clipped; anything
  further out, or empty, is skipped. An image keeps its other boxes when some are skipped; an image none of whose
  boxes survive is skipped, since it would teach "nothing here". Every skip is reported with its file and line.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from xml.etree.ElementTree import ParseError

import numpy as np
import supervision as sv
from PIL import Image
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import parse as parse_xml
from supervision.dataset.formats.pascal_voc import detections_from_xml_obj

from active_learning.images import FetchedImage, ImageCache, ImageError
from active_learning.labelstudio.config import LabelConfigError, ProjectSchema, LabelsControl, label_config_for
from active_learning.labelstudio.records import AnnotationRecord, ProjectRecord, TaskRecord
from active_learning.labelstudio.regions import boxes_from_result, regions_from_detections
from active_learning.progress import progress
from active_learning.store import Store
from active_learning.tools import CSV_COLUMNS, IMAGE_EXTENSIONS
from model.prompts import ClassSpec

BOX_SLACK = (2.0, 0.02)
"""A box may cross the image border by max(2 px, 2 % of the image side) and is then clipped."""
URL_SCHEME = "import://"
MAX_REPORTED = 50


class InterchangeError(ValueError):
    """The import cannot start at all (no classes, bad CSV header); the message says what to do."""


# --- the project ------------------------------------------------------------------------------------------

def project_control(store: Store, project_id: int, classes: list[ClassSpec] | None = None,
                    control: str | None = None) -> tuple[ProjectSchema, LabelsControl]:
    """The project's schema and the control imported boxes go to (``control``, default the first); with
    ``classes``, the project is created first if the store has no label config for it (it may come from Label
    Studio later: its config then replaces ours)."""
    schema = store.projects.schema(project_id)
    if schema is None and classes:
        store.projects.set_label_config(project_id, label_config_for(classes))
        schema = store.projects.schema(project_id)
    if schema is None:
        raise InterchangeError(f"project {project_id} has no classes in the store: give them with --classes "
                               "'a,b(alias|alias)', or run `groundloop sync --project N` first")
    try:
        target = schema.control(control)
    except LabelConfigError as exc:
        raise InterchangeError(str(exc)) from None
    if classes and {c.name for c in classes} != {c.name for c in target.classes}:
        raise InterchangeError(f"project {project_id} already has the classes "
                               f"{', '.join(c.name for c in target.classes)} in control {target.name!r}; leave out "
                               "--classes or change them in Label Studio")
    return schema, target


# --- the report -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Skip:
    where: str
    """``file`` or ``file:line``."""
    reason: str
    """One of a few fixed phrases (``unknown class``, ``box outside the image`` ...) the summary counts."""
    detail: str = ""


@dataclass
class ImportReport:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    boxes: int = 0
    clipped: int = 0
    skipped: list[Skip] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.new + self.updated + self.unchanged} images imported ({self.new} new, {self.updated} "
                 f"updated, {self.unchanged} unchanged), {self.boxes} boxes ({self.clipped} clipped to the image)"]
        return "\n".join(lines + skip_lines(self.skipped))


def skip_lines(skipped: list[Skip]) -> list[str]:
    """A count per reason, then the first ``MAX_REPORTED`` skips one per line."""
    if not skipped:
        return []
    counts = Counter(s.reason for s in skipped).most_common()
    lines = [f"{len(skipped)} skipped: " + ", ".join(f"{n} {reason}" for reason, n in counts)]
    lines += [f"  {s.where}: {s.reason}" + (f" ({s.detail})" if s.detail else "") for s in skipped[:MAX_REPORTED]]
    if len(skipped) > MAX_REPORTED:
        lines.append(f"  ... and {len(skipped) - MAX_REPORTED} more")
    return lines


# --- import ---------------------------------------------------------------------------------------------------

@dataclass
class _SourceImage:
    """One image file of a dataset and its boxes, before checking: ``boxes`` is ``[(label, xyxy, where)]``."""

    path: Path
    where: str
    boxes: list[tuple[str, list[float], str]] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """The image size each box's source claims (CSV rows do), by the box's ``where``."""
    explicitly_empty: bool = False
    """The source says outright that the image shows nothing (a VOC file without objects)."""


def import_voc(store: Store, cache: ImageCache, project_id: int, voc_dir: Path, images_dir: Path | None = None,
               classes: list[ClassSpec] | None = None, control: str | None = None) -> ImportReport:
    """Import every ``*.xml`` under ``voc_dir``. Its image is ``<filename>`` (else the XML's name with an image
    extension) in ``images_dir``, else beside the XML or in a sibling folder (``annotations/`` + ``images/``)."""
    target = project_control(store, project_id, classes, control)
    report = ImportReport()
    sources = []
    for xml_path in progress(sorted(Path(voc_dir).rglob("*.xml")), "reading VOC", "file"):
        where = str(xml_path.relative_to(voc_dir))
        try:
            root = parse_xml(xml_path).getroot()
        except (ParseError, DefusedXmlException, OSError) as exc:
            report.skipped.append(Skip(where, "unreadable XML", str(exc)))
            continue
        image_path = _find_image(xml_path, (root.findtext("filename") or "").strip(), images_dir)
        if image_path is None:
            report.skipped.append(Skip(where, "missing image file", root.findtext("filename") or xml_path.stem))
            continue
        try:
            with Image.open(image_path) as image:
                size = image.size  # only <polygon> masks need it; we keep the boxes
        except OSError as exc:
            report.skipped.append(Skip(where, "unreadable image", f"{image_path}: {exc}"))
            continue
        try:
            detections, names = detections_from_xml_obj(root, [], size)
        except ValueError as exc:
            report.skipped.append(Skip(where, "unreadable XML", str(exc)))
            continue
        source = _SourceImage(image_path, where, explicitly_empty=len(detections) == 0)
        for i, (xyxy, class_id) in enumerate(zip(detections.xyxy.tolist(), detections.class_id)):
            source.boxes.append((names[class_id], xyxy, f"{where} object {i + 1}"))
        sources.append(source)
    _import_sources(store, cache, project_id, target, sources, report)
    return report


def import_csv(store: Store, cache: ImageCache, project_id: int, csv_file: Path, images_dir: Path,
               classes: list[ClassSpec] | None = None, control: str | None = None) -> ImportReport:
    """Import a CSV with one box per row (``CSV_COLUMNS``, pixel corners); ``image_name`` is relative to
    ``images_dir``."""
    target = project_control(store, project_id, classes, control)
    report = ImportReport()
    by_image: dict[str, _SourceImage] = {}
    with open(csv_file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InterchangeError(f"{csv_file}: missing column(s) {', '.join(missing)}; "
                                   f"expected {','.join(CSV_COLUMNS)}")
        for row in reader:
            where = f"{Path(csv_file).name}:{reader.line_num}"
            try:
                xyxy = [float(row[c]) for c in CSV_COLUMNS[1:5]]
                size = (int(row["image_width"]), int(row["image_height"]))
            except (TypeError, ValueError):
                report.skipped.append(Skip(where, "bad row", "box corners and image size must be numbers"))
                continue
            name = (row["image_name"] or "").strip()
            source = by_image.setdefault(name, _SourceImage(Path(images_dir) / name, name))
            source.boxes.append(((row["label_name"] or "").strip(), xyxy, where))
            source.sizes[where] = size
    for name, source in list(by_image.items()):
        if not name or not source.path.is_file():
            rows = ", ".join(where for _, _, where in source.boxes)
            report.skipped.append(Skip(rows, "missing image file", str(source.path)))
            del by_image[name]
    _import_sources(store, cache, project_id, target, list(by_image.values()), report)
    return report


def imported_id(project_id: int, url: str) -> int:
    """A task's first-choice id in [-2**31, -1] (PostgreSQL's INTEGER): 31 bits of a hash of project and URL."""
    digest = hashlib.sha256(f"{project_id}:{url}".encode()).digest()
    return -1 - (int.from_bytes(digest[:4], "big") >> 1)


def _free_id(store: Store, project_id: int, url: str) -> int:
    """``imported_id``, or the next id down when another image already holds it (rare: 31 bits)."""
    task_id = imported_id(project_id, url)
    while True:
        task = store.tasks.get(task_id)
        if task is None or (task.project_id == project_id and task.image_url == url):
            return task_id
        task_id = task_id - 1 if task_id > -2**31 else -1


def _import_sources(store: Store, cache: ImageCache, project_id: int,
                    target: tuple[ProjectSchema, LabelsControl], sources: list[_SourceImage],
                    report: ImportReport) -> None:
    known = {c.name for c in target[1].classes}
    seen: dict[str, str] = {}
    for source in progress(sources, "importing", "image"):
        try:
            data = source.path.read_bytes()
            url = URL_SCHEME + hashlib.sha256(data).hexdigest()
            image = cache.put(url, data)
        except (OSError, ImageError) as exc:
            report.skipped.append(Skip(source.where, "unreadable image", str(exc)))
            continue
        if url in seen:
            report.skipped.append(Skip(source.where, "duplicate image", f"same content as {seen[url]}"))
            continue
        seen[url] = source.where
        boxes, labels = [], []
        for label, xyxy, where in source.boxes:
            problem = _box_problem(label, xyxy, source.sizes.get(where), image, known)
            if problem:
                report.skipped.append(Skip(where, *problem))
                continue
            clipped = _clip(xyxy, image.width, image.height)
            report.clipped += clipped != xyxy
            boxes.append(clipped)
            labels.append(label)
        if not boxes and not source.explicitly_empty:
            continue  # every box was skipped (and reported): the image would wrongly say "nothing here"
        _save(store, project_id, target, source, url, image, boxes, labels, report)


def _box_problem(label: str, xyxy: list[float], claimed_size: tuple[int, int] | None, image: FetchedImage,
                 known: set[str]) -> tuple[str, str] | None:
    """Why this box cannot be imported, as ``(reason, detail)``; None when it can."""
    if label not in known:
        return "unknown class", f"{label!r} is not one of {', '.join(sorted(known))}"
    if claimed_size is not None and claimed_size != (image.width, image.height):
        return "size mismatch", f"row says {claimed_size[0]}x{claimed_size[1]}, file is {image.width}x{image.height}"
    x1, y1, x2, y2 = xyxy
    if x2 <= x1 or y2 <= y1:
        return "empty box", f"{_fmt(xyxy)}"
    slack_x, slack_y = (max(BOX_SLACK[0], BOX_SLACK[1] * side) for side in (image.width, image.height))
    if x1 < -slack_x or y1 < -slack_y or x2 > image.width + slack_x or y2 > image.height + slack_y \
            or x1 >= image.width or y1 >= image.height or x2 <= 0 or y2 <= 0:
        return "box outside the image", f"{_fmt(xyxy)} on a {image.width}x{image.height} image"
    return None


def _save(store: Store, project_id: int, target: tuple[ProjectSchema, LabelsControl], source: _SourceImage,
          url: str, image: FetchedImage, boxes: list[list[float]], labels: list[str], report: ImportReport) -> None:
    """Upsert the task and its annotation, unless the store already holds exactly these boxes. Regions of the
    project's other controls (imported into them before) are kept: an import replaces its own control's boxes."""
    schema, control = target
    detections = sv.Detections(xyxy=np.array(boxes, dtype=float).reshape(-1, 4),
                               data={"class_name": np.array(labels, dtype=str)})
    task_id = _free_id(store, project_id, url)
    existing = store.annotations.get(task_id)
    others = [r for r in existing.result if r.get("from_name") != control.name] if existing else []
    result = others + regions_from_detections(detections, schema, image.width, image.height, control=control.name)
    stored_boxes, size = boxes_from_result(result, size=(image.width, image.height))
    report.boxes += len(boxes)
    if existing is not None and existing.boxes == stored_boxes:
        report.unchanged += 1
        return
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    task = TaskRecord(id=task_id, project_id=project_id,
                      data={schema.image_key: url, "imported_from": str(source.path)})
    annotation = AnnotationRecord(
        id=task_id, task_id=task_id, project_id=project_id, result=result, boxes=stored_boxes, image_size=size,
        was_cancelled=False, completed_by=None, lead_time=None, created_at=now, updated_at=now, prediction=None,
        raw={"imported_from": source.where},
    )
    store.annotations.save(ProjectRecord(project_id, None, None, None), task, annotation)
    store.tasks.record_image(task_id, image.sha256, image.width, image.height)
    if existing is None:
        report.new += 1
    else:
        report.updated += 1


def _find_image(xml_path: Path, filename: str, images_dir: Path | None) -> Path | None:
    folder = xml_path.parent
    folders = [images_dir] if images_dir else [folder, *sorted(p for p in folder.parent.iterdir()
                                                               if p.is_dir() and p != folder)]
    names = [filename] if filename else []
    names += [xml_path.stem + ext for ext in IMAGE_EXTENSIONS]
    return next((f / n for f in folders for n in names if (f / n).is_file()), None)


def _clip(xyxy: list[float], width: int, height: int) -> list[float]:
    return [min(max(v, 0.0), limit) for v, limit in zip(xyxy, (width, height, width, height))]


def _fmt(xyxy: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in xyxy) + "]"
