"""Custom labels: which of a group's labels a box of the group's phrase is, between detection and regions.

Labels sharing a ``predicted_values`` phrase (``ProjectSchema.label_groups``) are detected once, as the phrase; here
each such box gets one of the group's labels: by the serving version's head for the group (``model.classifier``: a
linear head on frozen DINOv2 features of the box's crop), or, while the group has no head yet, the label the
annotators used most for the phrase. Afterwards ``data["class_name"]`` holds the label, ``data["detected_as"]``
the phrase and ``data["label_score"]`` the label's probability (a region's score is the box's times it; without
a head 1 / the group's size). The image's uncertainty falls to its least certain label's margin (best minus second
probability; 0 without a head), so uncertainty sampling sends the tasks whose labels the classifier is least sure
of, and those no head has seen yet, to a human first.

The heads belong to a model version (stored in ``<data dir>/classifiers/<version>``, named by
``metrics["classifier"]``), so deploying or rolling back a version brings its heads along; the backbone is shared
by every version (``Settings.classifier_backbone``, loaded once per process the first time a head is used) and a
head is only used on the backbone it was trained on (its digest).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from active_learning.serving.shared_models import ModelUnavailable, SharedModels
from model.sources import CLASSIFIER

if TYPE_CHECKING:
    import supervision as sv
    import torch
    from PIL import Image

    from active_learning.labelstudio.config import ProjectSchema
    from active_learning.serving.jobs import Job
    from active_learning.store import Store
    from model.classifier import CropEncoder, LabelHead

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionClassifier:
    """A model version's heads, by the phrase of their group, and the digest of the backbone they were trained on."""

    heads: Mapping[str, "LabelHead"]
    backbone_digest: str
    path: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "VersionClassifier":
        """``ClassifierError`` (one line) when the heads cannot be read."""
        from model.classifier import load_heads

        heads, metadata = load_heads(Path(path))
        return cls({head.phrase: head for head in heads}, str(metadata.get("backbone_digest", "")), str(path))

    def head_for(self, phrase: str, labels: tuple[str, ...]) -> "LabelHead | None":
        """The head of ``phrase`` if it chooses among exactly ``labels`` (a config edited since it was trained
        has other labels in the group: the head no longer answers its question)."""
        head = self.heads.get(phrase)
        return head if head is not None and tuple(head.labels) == tuple(labels) else None


def _load_encoder(source: str, device: str) -> "CropEncoder":
    from model.classifier import CropEncoder

    return CropEncoder.load(source, device=device)


_ENCODERS: SharedModels["CropEncoder"] = SharedModels(
    CLASSIFIER, _load_encoder, "no custom labels",
    "set --classifier-backbone / GROUNDLOOP_CLASSIFIER_BACKBONE to a DINOv2 hub id or save_pretrained directory")


def shared_encoder(source: str, device: "torch.device | str") -> "CropEncoder":
    """The process's crop encoder for ``source`` on ``device``; ``ModelUnavailable`` when it cannot load."""
    return _ENCODERS.get(source, device)


def assign_labels(image: "Image.Image", found: "sv.Detections", job: "Job", device: "torch.device | str") -> None:
    """Give each detection of a group's phrase one of the group's labels (see the module docstring), in place."""
    groups = {group.phrase: group for group in job.schema.label_groups}
    names = [str(name) for name in found.data["class_name"]]
    grouped = [i for i, name in enumerate(names) if name in groups]
    if not grouped:
        return
    label_scores = np.ones(len(found), dtype=np.float32)
    margins = []
    classifier = job.classifier
    features = None
    for phrase, group in groups.items():
        rows = [i for i in grouped if names[i] == phrase]
        if not rows:
            continue
        head = classifier.head_for(phrase, group.labels) if classifier is not None else None
        if head is None:
            label = job.fallback_labels.get(phrase, group.labels[0])
            for i in rows:
                names[i], label_scores[i] = label, 1.0 / len(group.labels)
            margins.append(0.0)
            continue
        if features is None:
            encoder = shared_encoder(job.classifier_backbone, device)
            if encoder.digest != classifier.backbone_digest:
                raise ModelUnavailable(f"the classifier heads of this version were trained on another backbone "
                                   f"(digest {classifier.backbone_digest}) than {job.classifier_backbone} "
                                   f"({encoder.digest})")
            features = dict(zip(grouped, encoder.encode(image, found.xyxy[grouped])))
        crops = np.stack([features[i] for i in rows])
        best, probability = head.predict(crops)
        for i, b, p in zip(rows, best.tolist(), probability.tolist()):
            names[i], label_scores[i] = head.labels[b], p
        margins.append(float(head.margin(crops).min()))
    found.data["detected_as"] = np.array([str(n) for n in found.data["class_name"]])
    found.data["class_name"] = np.array(names)
    found.data["label_score"] = label_scores
    found.metadata["uncertainty"] = min([float(found.metadata.get("uncertainty", 1.0)), *margins])


_label_counts: dict[tuple[str, int], tuple[tuple, Counter]] = {}
_label_counts_lock = threading.Lock()


def fallback_labels(store: "Store", project_id: int | None, schema: "ProjectSchema") -> dict[str, str]:
    """Per group phrase, the label the project's annotators used most (ties: config order); the first label of a
    group nobody labeled yet. The counts are remembered per project until its annotations change."""
    if not schema.label_groups:
        return {}
    counts: Counter[str] = Counter()
    if project_id is not None:
        key, state = (str(store.db.engine.url), project_id), store.annotations.state(project_id)
        with _label_counts_lock:
            cached = _label_counts.get(key)
        if cached is not None and cached[0] == state:
            counts = cached[1]
        else:
            counts = Counter(box.get("label") for task in store.tasks.labeled(project_id)
                             for box in schema.label_boxes(task.boxes))
            with _label_counts_lock:
                _label_counts[key] = (state, counts)
    return {group.phrase: max(group.labels, key=lambda label: (counts[label], -group.labels.index(label)))
            for group in schema.label_groups}
