"""The classifier heads of a project's label groups: trained on the crops of the humans' boxes, kept only if better.

**Crops.** Every human box of a group's labels on the project's labeled tasks, split by task exactly as the
detector's data (``dataset.validation_ids``), so a task that validates the detector validates the heads too and no
head is judged on crops it trained on. Features come from the frozen backbone once per (backbone, image, box)
(``FeatureCache``): a round encodes only the boxes it has not seen, and fitting a linear head takes well under a
second, so heads can be retrained whenever a few labels arrive (the worker's ``classify`` rounds), not only in
detector rounds.

**Choice, per group** (the promotion rule for labels): a new head serves only if its accuracy on the group's
validation crops is higher than that of what the deployed version serves for the group on the same crops (its
head, or without one the most used label); with no validation crop nothing can be measured and what serves stays.
Every keep or skip is logged with both accuracies.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from active_learning.images import ImageCache, ImageError
from active_learning.serving.labeling import VersionClassifier, fallback_labels, shared_encoder
from active_learning.settings import Settings
from active_learning.store import Store
from active_learning.training.dataset import validation_ids
from model.classifier import CropEncoder, LabelHead, accuracy, save_heads, train_head

if TYPE_CHECKING:
    from active_learning.labelstudio.config import LabelGroup, ProjectSchema

log = logging.getLogger(__name__)


class FeatureCache:
    """Crop features on disk: ``<features_dir>/<backbone digest>/<image sha256>.npz`` holds each image's boxes and
    their features; boxes not there yet are encoded and added. Files are replaced atomically (processes share it)."""

    def __init__(self, directory: Path, encoder: CropEncoder):
        self.directory = Path(directory) / encoder.digest
        self.encoder = encoder

    def features(self, image_sha256: str, load_image, boxes: np.ndarray) -> np.ndarray:
        """Features of ``boxes`` (pixels xyxy) on the image; ``load_image()`` is called only if some are new."""
        boxes = np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 2)
        path = self.directory / f"{image_sha256}.npz"
        known: dict[tuple, np.ndarray] = {}
        if path.exists():
            try:
                with np.load(path) as stored:
                    known = {tuple(b): f for b, f in zip(stored["boxes"].tolist(), stored["features"])}
            except (OSError, ValueError, KeyError):  # a damaged file is rebuilt
                known = {}
        missing = [b for b in {tuple(b) for b in boxes.tolist()} if b not in known]
        if missing:
            encoded = self.encoder.encode(load_image(), np.array(missing))
            known.update(zip(missing, encoded))
            self._write(path, known)
        if not len(boxes):
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([known[tuple(b)] for b in boxes.tolist()]).astype(np.float32)

    def _write(self, path: Path, known: dict[tuple, np.ndarray]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        with os.fdopen(handle, "wb") as out:
            np.savez(out, boxes=np.array(list(known), dtype=np.float64).reshape(-1, 4),
                     features=np.stack(list(known.values())).astype(np.float32))
        os.replace(partial, path)


@dataclass
class GroupCrops:
    """One group's crops: features and label indices (into ``group.labels``), by split."""

    group: "LabelGroup"
    train: list[np.ndarray] = field(default_factory=list)
    train_targets: list[int] = field(default_factory=list)
    validation: list[np.ndarray] = field(default_factory=list)
    validation_targets: list[int] = field(default_factory=list)

    def features(self, split: str) -> np.ndarray:
        rows = self.train if split == "train" else self.validation
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def collect_crops(store: Store, cache: ImageCache, features: FeatureCache, project_id: int, schema: "ProjectSchema",
                  val_fraction: float, val_min: int) -> dict[str, GroupCrops]:
    """Per group phrase, the crops of its labels' human boxes on every labeled task, split as the detector's data."""
    groups = {label: group for group in schema.label_groups for label in group.labels}
    crops = {group.phrase: GroupCrops(group) for group in schema.label_groups}
    tasks = store.tasks.labeled(project_id)
    validate = validation_ids([t.task_id for t in tasks], val_fraction, val_min)
    for task in tasks:
        boxes = [b for b in schema.label_boxes(task.boxes) if b.get("label") in groups]
        if not boxes:
            continue
        try:
            sha = task.image_sha256 or cache.get(task.image_url).sha256
            found = features.features(sha, lambda: cache.get(task.image_url).image, [b["box"] for b in boxes])
        except ImageError as error:
            log.warning("project %d: task %d left out of the classifier's crops: %s", project_id, task.task_id, error)
            continue
        for box, feature in zip(boxes, found):
            group = groups[box["label"]]
            into = crops[group.phrase]
            split = (into.validation, into.validation_targets) if task.task_id in validate else \
                (into.train, into.train_targets)
            split[0].append(feature)
            split[1].append(group.labels.index(box["label"]))
    return crops


@dataclass
class HeadsChoice:
    """What a candidate version serves per group, and why."""

    heads: list[LabelHead]
    groups: dict[str, dict]
    """Phrase -> labels, crops, counts, val_accuracy, val_crops, served_accuracy (what served before, on the same
    crops) and trained_in (the version whose round trained the head; None: no head)."""
    improved: list[str]
    """Phrases whose new head beat what served."""


def choose_heads(crops: dict[str, GroupCrops], served: VersionClassifier | None, fallback: dict[str, str],
                 backbone_digest: str, served_version: str | None, seed: int = 0) -> HeadsChoice:
    """Train a head per group with training crops and keep it where it beats what serves (module docstring)."""
    usable = served if served is not None and served.backbone_digest == backbone_digest else None
    heads, groups, improved = [], {}, []
    for phrase, group_crops in crops.items():
        group = group_crops.group
        val, val_targets = group_crops.features("validation"), group_crops.validation_targets
        old = usable.head_for(phrase, group.labels) if usable is not None else None
        if old is not None:
            served_accuracy = accuracy(old, val, val_targets) if val_targets else None
        else:
            fallback_index = group.labels.index(fallback.get(phrase, group.labels[0]))
            served_accuracy = float(np.mean(np.array(val_targets) == fallback_index)) if val_targets else None
        new = None
        if group_crops.train_targets:
            new = train_head(phrase, group.labels, group_crops.features("train"), group_crops.train_targets,
                             seed=seed)
            new_accuracy = accuracy(new, val, val_targets) if val_targets else None
            new = LabelHead(new.phrase, new.labels, new.weight, new.bias, new.crops, new.counts, new_accuracy,
                            len(val_targets))
        what = f"head for {phrase!r} ({', '.join(group.labels)})"
        if new is not None and new.val_accuracy is not None and served_accuracy is not None \
                and new.val_accuracy > served_accuracy:
            log.info("%s: new head kept: val accuracy %.3f vs %.3f served, on %d crops (trained on %d)", what,
                     new.val_accuracy, served_accuracy, len(val_targets), new.crops)
            heads.append(new)
            improved.append(phrase)
            groups[phrase] = _summary(new, served_accuracy, trained_in=None)
            continue
        if new is None:
            why = "no training crop"
        elif new.val_accuracy is None:
            why = "no validation crop to measure it on"
        else:
            why = f"val accuracy {new.val_accuracy:.3f} is not above {served_accuracy:.3f} served"
        log.info("%s: new head skipped (%s); %s", what, why, "the served head stays" if old else "no head yet")
        if old is not None:
            heads.append(old)
            groups[phrase] = _summary(old, served_accuracy, trained_in=served_version, val_crops=len(val_targets))
        else:
            groups[phrase] = {"labels": list(group.labels), "crops": len(group_crops.train_targets),
                              "val_accuracy": None, "val_crops": len(val_targets), "served_accuracy": served_accuracy,
                              "trained_in": None}
    return HeadsChoice(heads, groups, improved)


def _summary(head: LabelHead, served_accuracy: float | None, trained_in: str | None,
             val_crops: int | None = None) -> dict:
    return {"labels": list(head.labels), "crops": head.crops, "counts": dict(head.counts),
            "val_accuracy": head.val_accuracy, "val_crops": head.val_crops if val_crops is None else val_crops,
            "served_accuracy": served_accuracy, "trained_in": trained_in}


def train_project_heads(settings: Settings, store: Store, project_id: int, schema: "ProjectSchema",
                        served: VersionClassifier | None, served_version: str | None) -> tuple[HeadsChoice, str] | None:
    """The heads a candidate of the project serves and the backbone digest they read; None without label groups."""
    if not schema.label_groups:
        return None
    encoder = shared_encoder(settings.classifier_backbone, settings.device)
    crops = collect_crops(store, ImageCache(settings), FeatureCache(settings.features_dir, encoder), project_id,
                          schema, settings.val_fraction, settings.val_min)
    fallback = fallback_labels(store, project_id, schema)
    return choose_heads(crops, served, fallback, encoder.digest, served_version, settings.seed), encoder.digest


def save_version_heads(settings: Settings, name: str, choice: HeadsChoice, backbone_digest: str) -> dict:
    """Write the heads of version ``name``; returns its ``metrics["classifier"]`` (path relative to the data dir)."""
    directory = settings.classifiers_dir / name
    if choice.heads:
        save_heads(choice.heads, directory, settings.classifier_backbone, backbone_digest)
    path = str(directory.relative_to(settings.data_dir)) if choice.heads else None
    for phrase, summary in choice.groups.items():
        if summary["trained_in"] is None and phrase in choice.improved:
            summary["trained_in"] = name
    return {"path": path, "backbone": settings.classifier_backbone, "backbone_digest": backbone_digest,
            "groups": choice.groups}
