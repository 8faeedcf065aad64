"""``groundloop predict``: pre-label a folder of images without Label Studio running.

Writes into ``out/``:

* ``tasks.json``: a Label Studio import file, one task per image with our prediction (``model_version`` as the
  server names the same starting model, so a project connected to groundloop does not ask for these tasks again);
* ``label_config.xml``: the labeling config those predictions fit (``label`` rectangles on ``image``);
* ``coco.json``: the boxes as COCO (file names relative to the images folder);
* ``previews/``: each image with its boxes and labels drawn;
* ``predictions/<image>.json``: one file per image, written last, so an interrupted run resumes where it stopped.
  A cached prediction is reused while the image bytes, the model source, the classes and the detection settings
  are the same; a run with nothing new to predict does not even load the model, and rewrites nothing.

Sharding, for several processes or machines sharing ``out/``: a run with ``shard=(i, n)`` handles only the images
whose relative path hashes (sha256, mod ``n``) to ``i``, the same split everywhere, whatever the listing order, and
writes its import file and COCO as ``tasks.shard-<i>-of-<n>.json`` / ``coco.shard-<i>-of-<n>.json`` (the per-image
records and previews are per image, so shards never write the same file). ``merge=True`` then loads no model: it
reads every image's record and writes ``tasks.json`` and ``coco.json`` exactly as an unsharded run does, or, when
some image has no record for these settings yet, raises ``MissingPredictions`` and writes nothing.

Task image URLs are ``url_prefix`` + file name; the default suits Label Studio's local files serving with
``LOCAL_FILES_DOCUMENT_ROOT`` set to the images folder's parent (as docker/docker-compose.yml does).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import supervision as sv

from active_learning.images import ImageError, decode
from active_learning.labelstudio.config import label_config_for
from active_learning.labelstudio.regions import boxes_from_result
from active_learning.progress import progress
from active_learning.serving.jobs import folder_job
from active_learning.serving.pool import starting_model_version
from active_learning.serving.batching import predict_batched
from active_learning.settings import Settings
from active_learning.tools import IMAGE_EXTENSIONS
from model.detector import Detector
from model.prompts import ClassSpec


@dataclass
class PrelabelReport:
    predicted: int = 0
    reused: int = 0
    boxes: int = 0
    failed: list[str] = field(default_factory=list)

    def summary(self, out_dir: Path) -> str:
        lines = [f"{self.predicted + self.reused} images pre-labeled ({self.predicted} predicted now, {self.reused} "
                 f"from an earlier run), {self.boxes} boxes; written to {out_dir}"]
        lines += [f"  skipped {line}" for line in self.failed]
        return "\n".join(lines)


class MissingPredictions(Exception):
    """A merge found images with no prediction record (for these classes and settings) yet."""

    def __init__(self, names: list[str], total: int):
        self.names = names
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        super().__init__(f"{len(names)} of {total} images have no prediction yet for these classes and settings: "
                         f"{shown}; run the shards that hold them (--shard I/N), then merge again; nothing written")


def shard_of(relative_path: str, count: int) -> int:
    """The shard (0..count-1) of an image, from the sha256 of its path relative to the images folder (POSIX
    separators): stable across machines, processes and Python versions, unlike ``hash()``."""
    return int.from_bytes(hashlib.sha256(relative_path.encode()).digest()[:8], "big") % count


def default_url_prefix(images_dir: Path) -> str:
    return f"/data/local-files/?d={quote(Path(images_dir).resolve().name)}/"


def prelabel_folder(settings: Settings, images_dir: Path, classes: list[ClassSpec], out_dir: Path,
                    url_prefix: str | None = None, shard: tuple[int, int] | None = None,
                    merge: bool = False) -> PrelabelReport:
    """Pre-label every image directly in ``images_dir`` (not in its subfolders) into ``out_dir``; only the images
    of ``shard`` = (index, count) when given; with ``merge``, predict nothing: write the outputs of the whole folder
    from the records earlier (sharded) runs left, or raise ``MissingPredictions``."""
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    prefix = default_url_prefix(images_dir) if url_prefix is None else url_prefix
    job = folder_job(settings, classes)
    key = f"{settings.model}:{job.params_key}"
    files = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if shard is not None:
        files = [p for p in files if shard_of(p.relative_to(images_dir).as_posix(), shard[1]) == shard[0]]
    suffix = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
    report, records, missing, new = PrelabelReport(), {}, [], []
    for path in (progress(files, "merging", "image") if merge else files):
        data = path.read_bytes()
        record = _read_record(out_dir / "predictions" / f"{path.name}.json", key, hashlib.sha256(data).hexdigest())
        if record is not None:
            report.reused += 1
            records[path] = record
        elif not merge:
            new.append(path)
        else:  # an undecodable image is skipped as an unsharded run skips it; any other is missing
            try:
                decode(str(path), data, settings.max_image_pixels)
                missing.append(path.name)
            except ImageError as exc:
                report.failed.append(f"{path.name}: {exc}")
    if new:
        records.update(_predict_new(settings, job, key, new, out_dir, report))
    records = [(path, records[path]) for path in files if path in records]
    report.boxes = sum(len(record["result"]) for _, record in records)
    tasks = [{"data": {job.schema.image_key: prefix + quote(path.name)},
              "predictions": [{"model_version": r["model_version"], "score": r["score"], "result": r["result"]}]}
             for path, r in records]
    if missing:
        raise MissingPredictions(missing, len(files))
    if tasks != _read_json(out_dir / f"tasks{suffix}.json"):
        _write_outputs(tasks, records, classes, out_dir, suffix)
    return report


def _predict_new(settings: Settings, job, key: str, paths: list[Path], out_dir: Path,
                 report: PrelabelReport) -> dict[Path, dict]:
    """Predict ``paths`` (decoded ahead of the model, in batches), writing each image's preview and record."""
    detector = Detector.load(settings.model, device=settings.device)
    version = starting_model_version(detector)
    records = {}
    outcomes = predict_batched(detector, job, paths, lambda path: decode(str(path), path.read_bytes(),
                                                                         settings.max_image_pixels), settings)
    for outcome in progress(outcomes, "pre-labeling", "image", total=len(paths)):
        path, fetched, predicted = outcome.item, outcome.fetched, outcome.prediction
        if predicted is None:  # one odd image must not stop the folder
            report.failed.append(f"{path.name}: {outcome.error}")
            continue
        _save_preview(fetched.image, predicted.detections, out_dir / "previews" / path.name)
        records[path] = {"key": key, "sha256": fetched.sha256, "width": fetched.width, "height": fetched.height,
                         **predicted.as_prediction(version)}
        _write_json(out_dir / "predictions" / f"{path.name}.json", records[path])
        report.predicted += 1
    return records


def _read_record(cache_file: Path, key: str, sha: str) -> dict | None:
    record = _read_json(cache_file)
    return record if isinstance(record, dict) and record.get("key") == key and record.get("sha256") == sha else None


def _read_json(path: Path):
    """The file's JSON, or None when it is missing or broken."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save_preview(image, detections: sv.Detections, path: Path) -> None:
    labels = [f"{name} {score:.2f}" for name, score in zip(detections.data["class_name"], detections.confidence)]
    drawn = sv.BoxAnnotator().annotate(image.copy(), detections)
    drawn = sv.LabelAnnotator().annotate(drawn, detections, labels=labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn.save(path)


def _write_outputs(tasks: list[dict], records: list[tuple[Path, dict]], classes: list[ClassSpec],
                   out_dir: Path, suffix: str = "") -> None:
    """``tasks<suffix>.json``, ``coco<suffix>.json`` and ``label_config.xml`` (the same for every shard)."""
    _write_json(out_dir / f"tasks{suffix}.json", tasks)
    _write_text(out_dir / "label_config.xml", label_config_for(classes) + "\n")
    names = [c.name for c in classes]
    annotations = {}
    for path, record in records:
        boxes, _ = boxes_from_result(record["result"])
        annotations[str(path)] = sv.Detections(xyxy=np.array([b["box"] for b in boxes], dtype=float).reshape(-1, 4),
                                               class_id=np.array([names.index(b["label"]) for b in boxes], dtype=int))
    dataset = sv.DetectionDataset(classes=names, images=list(annotations), annotations=annotations)
    coco = out_dir / f"coco{suffix}.json"
    tmp = _temporary(coco)
    try:
        dataset.as_coco(annotations_path=str(tmp))
        tmp.replace(coco)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, value) -> None:
    _write_text(path, json.dumps(value, indent=1))


def _write_text(path: Path, text: str) -> None:
    """Write to a temporary file, then rename: an interrupted run never leaves half a file, and shards writing
    the same file at once (``label_config.xml``) never mix their bytes."""
    tmp = _temporary(path)
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _temporary(path: Path) -> Path:
    """A name beside ``path`` unique to this write (this process, this machine on a shared folder); the file is
    created by its writer, so it gets the usual permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
