"""Crop classification for labels that language cannot name ("Alice" and "Bob" are both a "human face").

Grounding DINO finds the boxes; a label that only a picture tells apart is chosen by a linear head on frozen DINOv2
features of the box's crop. The backbone never trains, so retraining is fitting a logistic regression on features
already computed: seconds on a CPU. The feature is DINOv2's linear-probe recipe: the CLS token concatenated with
the mean of the patch tokens of the last layer. There is one head per group of labels sharing one detection
phrase: it chooses among those labels only, for the boxes that phrase found.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from model.detector import weights_digest
from model.devices import inference_autocast, resolve_device

DEFAULT_BACKBONE = "facebook/dinov2-small"
CONTEXT = 0.1
"""Each crop is its box grown by this fraction of the box's side on each side (clipped to the image)."""
CROPS_PER_BATCH = 32
NEVER_BIAS = -1e4
"""The bias of a label a head saw no crop of: its probability is exactly 0 in float32, so it never wins."""
REGULARISATION_C = 1.0
"""scikit-learn's inverse L2 strength, on standardised features (the scaling is folded back into the weights)."""
MAX_ITER = 500

FORMAT_VERSION = 1
WEIGHTS_FILE = "heads.safetensors"
METADATA_FILE = "heads.json"


class ClassifierError(Exception):
    """Heads that cannot be read; ``str()`` is one line."""


class CropEncoder:
    """Frozen DINOv2 features of box crops. ``encode`` may be called from several threads (one forward at a time)."""

    def __init__(self, model, processor, source: str, device: torch.device, digest: str):
        self.model = model
        self.processor = processor
        self.source = source
        self.device = device
        self.digest = digest
        self._lock = threading.Lock()
        # DINOv2 with registers puts its register tokens between CLS and the patches; plain DINOv2 has none.
        self._first_patch = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    @classmethod
    def load(cls, source: str | Path, device: str = "auto") -> "CropEncoder":
        """Load a hub id or a ``save_pretrained`` directory. ``device="auto"``: CUDA when present, else CPU."""
        source, device = str(source), resolve_device(device)
        model = AutoModel.from_pretrained(source)
        # The PIL image processor gives the same pixels whether or not torchvision is installed.
        processor = AutoImageProcessor.from_pretrained(source, backend="pil")
        digest = weights_digest(model)
        model.to(device).eval()
        return cls(model, processor, source, torch.device(device), digest)

    @property
    def dim(self) -> int:
        return 2 * int(self.model.config.hidden_size)

    def encode(self, image: Image.Image, xyxy: np.ndarray) -> np.ndarray:
        """``(n, 4)`` pixel boxes (x1, y1, x2, y2) on ``image`` -> ``(n, dim)`` float32 features, each row of unit
        L2 norm. Crops go through the model ``CROPS_PER_BATCH`` at a time."""
        windows = crop_windows(np.asarray(xyxy, dtype=np.float64).reshape(-1, 4), image.size)
        if not len(windows):
            return np.zeros((0, self.dim), dtype=np.float32)
        image = image if image.mode == "RGB" else image.convert("RGB")
        features = []
        for start in range(0, len(windows), CROPS_PER_BATCH):
            crops = [image.crop(tuple(window)) for window in windows[start:start + CROPS_PER_BATCH]]
            pixel_values = self.processor(images=crops, return_tensors="pt")["pixel_values"]
            with self._lock, torch.inference_mode(), inference_autocast(self.device):
                hidden = self.model(pixel_values=pixel_values.to(self.device)).last_hidden_state
                pooled = torch.cat([hidden[:, 0], hidden[:, self._first_patch:].mean(dim=1)], dim=1)
            features.append(pooled.float().cpu().numpy())
        stacked = np.concatenate(features)
        norms = np.linalg.norm(stacked, axis=1, keepdims=True)
        return (stacked / np.maximum(norms, 1e-12)).astype(np.float32)


def crop_windows(xyxy: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Integer crop windows ``(n, 4)`` (left, top, right, bottom) for PIL's ``crop``: each box grown by ``CONTEXT``
    of its side, clipped to the image, and at least 1 x 1 px inside it, whatever the box (reversed corners,
    zero size, outside the image, not finite)."""
    width, height = image_size
    boxes = np.nan_to_num(np.asarray(xyxy, dtype=np.float64).reshape(-1, 4), nan=0.0, posinf=1e9, neginf=-1e9)
    x1, x2 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    y1, y2 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
    pad_x, pad_y = CONTEXT * (x2 - x1), CONTEXT * (y2 - y1)
    left = np.clip(np.floor(x1 - pad_x), 0, width - 1)
    top = np.clip(np.floor(y1 - pad_y), 0, height - 1)
    right = np.clip(np.ceil(x2 + pad_x), left + 1, width)
    bottom = np.clip(np.ceil(y2 + pad_y), top + 1, height)
    return np.stack([left, top, right, bottom], axis=1).astype(np.int64)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value; heads compare by identity
class LabelHead:
    """A linear head choosing among the labels that share one detection phrase."""

    phrase: str
    labels: tuple[str, ...]
    weight: np.ndarray  # (len(labels), dim) float32
    bias: np.ndarray  # (len(labels),) float32
    crops: int  # training crops it was fit on
    counts: dict[str, int] = field(default_factory=dict)  # training crops per label
    val_accuracy: float | None = None
    val_crops: int = 0

    def __post_init__(self) -> None:
        labels = tuple(str(label) for label in self.labels)
        weight = np.array(self.weight, dtype=np.float32, copy=True)
        bias = np.array(self.bias, dtype=np.float32, copy=True).reshape(-1)
        if not labels:
            raise ValueError(f"the head for {self.phrase!r} has no labels")
        if len(set(labels)) != len(labels):
            raise ValueError(f"the head for {self.phrase!r} repeats a label: {list(labels)}")
        if weight.ndim != 2 or weight.shape[0] != len(labels) or bias.shape != (len(labels),):
            raise ValueError(f"the head for {self.phrase!r} has {len(labels)} labels but weight "
                             f"{weight.shape} and bias {bias.shape}")
        weight.flags.writeable = bias.flags.writeable = False
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "counts", {str(label): int(count) for label, count in self.counts.items()})

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """``(n, dim)`` features -> ``(n, len(labels))`` softmax probabilities."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim == 1 and features.size == 0:
            features = features.reshape(0, self.dim)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"the head for {self.phrase!r} takes (n, {self.dim}) features, got {features.shape}")
        logits = features @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True) if len(logits) else 0.0
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``labels`` of the best label per row, its probability)."""
        probabilities = self.probabilities(features)
        best = probabilities.argmax(axis=1)
        return best, probabilities[np.arange(len(best)), best]

    def margin(self, features: np.ndarray) -> np.ndarray:
        """Per row, the best label's probability less the second's, in [0, 1]; 1.0 when the head has one label."""
        probabilities = self.probabilities(features)
        if probabilities.shape[1] == 1:
            return np.ones(len(probabilities), dtype=np.float32)
        top_two = np.sort(probabilities, axis=1)[:, -2:]
        return np.clip(top_two[:, 1] - top_two[:, 0], 0.0, 1.0).astype(np.float32)


def train_head(phrase: str, labels: Sequence[str], features: np.ndarray, targets: Sequence[int], *,
               seed: int = 0) -> LabelHead:
    """Fit a multinomial logistic regression (scikit-learn, lbfgs) on ``features`` ``(n, dim)`` whose label is
    ``labels[targets[i]]``. Labels without crops get zero weight and ``NEVER_BIAS``; with one label present the
    head always chooses it. ``ValueError`` on no crops, mismatched lengths or a target outside ``labels``."""
    labels = tuple(labels)
    features = np.asarray(features, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if features.ndim != 2:
        raise ValueError(f"features must be (n, dim), got shape {features.shape}")
    if len(features) != len(targets):
        raise ValueError(f"{len(features)} feature rows but {len(targets)} targets")
    if not len(features):
        raise ValueError(f"no training crops for the head of {phrase!r}")
    if not labels:
        raise ValueError(f"the head for {phrase!r} has no labels")
    if targets.min() < 0 or targets.max() >= len(labels):
        raise ValueError(f"targets must index the {len(labels)} labels, got {targets.min()}..{targets.max()}")

    dim = features.shape[1]
    weight = np.zeros((len(labels), dim), dtype=np.float64)
    bias = np.full(len(labels), NEVER_BIAS, dtype=np.float64)
    present = np.unique(targets)
    if len(present) == 1:
        bias[present[0]] = 0.0
    else:
        from sklearn.linear_model import LogisticRegression  # a second to import: only when a head trains

        # Standardised features give lbfgs a well-conditioned problem and C the same meaning whatever the
        # backbone's feature scale; the scaling is folded back into weight and bias below.
        mean = features.mean(axis=0, dtype=np.float64)
        scale = features.std(axis=0, dtype=np.float64)
        scale = np.where(scale > 1e-8, scale, 1.0)
        regression = LogisticRegression(C=REGULARISATION_C, solver="lbfgs", max_iter=MAX_ITER, random_state=seed)
        regression.fit((features - mean) / scale, targets)
        coef, intercept = regression.coef_, regression.intercept_
        if len(regression.classes_) == 2:  # binary: one logit for classes_[1]; as a softmax, half on each side
            coef = np.concatenate([-coef / 2, coef / 2])
            intercept = np.concatenate([-intercept / 2, intercept / 2])
        for row, target in enumerate(regression.classes_):
            weight[target] = coef[row] / scale
            bias[target] = intercept[row] - float(np.dot(coef[row] / scale, mean))
    counts = {label: int(np.sum(targets == index)) for index, label in enumerate(labels)}
    return LabelHead(phrase=phrase, labels=labels, weight=weight.astype(np.float32), bias=bias.astype(np.float32),
                     crops=len(targets), counts=counts)


def accuracy(head: LabelHead, features: np.ndarray, targets: Sequence[int]) -> float:
    """The fraction of rows whose best label is their target; ``ValueError`` on no rows or mismatched lengths."""
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    best, _ = head.predict(features)
    if len(best) != len(targets):
        raise ValueError(f"{len(best)} feature rows but {len(targets)} targets")
    if not len(targets):
        raise ValueError(f"no crops to measure the head of {head.phrase!r} on")
    return float(np.mean(best == targets))


def save_heads(heads: Sequence[LabelHead], directory: Path, backbone: str, backbone_digest: str) -> None:
    """Write ``directory/heads.safetensors`` (the weights) and ``directory/heads.json`` (everything else); no
    pickle. Both go to a sibling temporary directory that is renamed into place, replacing an earlier save, so a
    crash never leaves a half-written directory. ``ValueError`` on two heads for one phrase or mixed dims."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    phrases = [head.phrase for head in heads]
    if len(set(phrases)) != len(phrases):
        raise ValueError(f"two heads for one phrase: {phrases}")
    dims = {head.dim for head in heads}
    if len(dims) > 1:
        raise ValueError(f"heads of different feature sizes {sorted(dims)} cannot share a backbone")
    tensors, entries = {}, []
    for index, head in enumerate(heads):
        tensors[f"{index}.weight"] = np.ascontiguousarray(head.weight)
        tensors[f"{index}.bias"] = np.ascontiguousarray(head.bias)
        entries.append({"phrase": head.phrase, "labels": list(head.labels), "crops": head.crops,
                        "counts": head.counts, "val_accuracy": head.val_accuracy, "val_crops": head.val_crops})
    metadata = {"format": FORMAT_VERSION, "backbone": str(backbone), "backbone_digest": str(backbone_digest),
                "dim": dims.pop() if dims else None, "heads": entries}

    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        save_file(tensors, str(partial / WEIGHTS_FILE))
        (partial / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        for name in (WEIGHTS_FILE, METADATA_FILE):
            with open(partial / name, "rb") as written:
                os.fsync(written.fileno())
        old = None
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            directory.rename(old / directory.name)
        partial.rename(directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def load_heads(directory: Path) -> tuple[list[LabelHead], dict]:
    """The heads ``save_heads`` wrote, and its metadata (``format``, ``backbone``, ``backbone_digest``, ``dim``).
    ``ClassifierError`` (one line naming the directory and the reason) when they cannot be read as written."""
    directory = Path(directory)

    def fail(reason: str) -> ClassifierError:
        return ClassifierError(" ".join(f"cannot read the classifier heads in {directory}: {reason}".split()))

    if not directory.is_dir():
        raise fail("no such directory")
    for name in (METADATA_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise fail(f"{name} is missing")
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise fail(f"{METADATA_FILE} is not readable JSON ({str(exc)[:200]})") from None
    if not isinstance(metadata, dict):
        raise fail(f"{METADATA_FILE} is not a JSON object")
    if metadata.get("format") != FORMAT_VERSION:
        raise fail(f"unknown format version {metadata.get('format')!r} (this code reads {FORMAT_VERSION})")
    try:
        from safetensors.numpy import load_file

        tensors = load_file(str(directory / WEIGHTS_FILE))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for truncated files
        raise fail(f"{WEIGHTS_FILE} is not readable ({type(exc).__name__}: {str(exc)[:200]})") from None

    entries, dim = metadata.get("heads"), metadata.get("dim")
    if not isinstance(entries, list) or not isinstance(metadata.get("backbone"), str) \
            or not isinstance(metadata.get("backbone_digest"), str):
        raise fail(f"{METADATA_FILE} lacks its heads, backbone or backbone_digest")
    heads = []
    for index, entry in enumerate(entries):
        try:
            weight, bias = tensors[f"{index}.weight"], tensors[f"{index}.bias"]
        except KeyError as exc:
            raise fail(f"{WEIGHTS_FILE} has no tensor {exc.args[0]!r} for head {index}") from None
        try:
            labels = tuple(entry["labels"])
            if weight.shape != (len(labels), dim) or bias.shape != (len(labels),):
                raise fail(f"head {index} ({entry['phrase']!r}) has {len(labels)} labels of dim {dim} but weight "
                           f"{weight.shape} and bias {bias.shape}")
            val_accuracy = entry.get("val_accuracy")
            heads.append(LabelHead(
                phrase=str(entry["phrase"]), labels=labels, weight=weight, bias=bias, crops=int(entry["crops"]),
                counts=dict(entry.get("counts", {})),
                val_accuracy=None if val_accuracy is None else float(val_accuracy),
                val_crops=int(entry.get("val_crops", 0)),
            ))
        except ClassifierError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise fail(f"head {index} in {METADATA_FILE} is malformed ({type(exc).__name__}: {exc})") from None
    if len(tensors) != 2 * len(heads):
        raise fail(f"{WEIGHTS_FILE} holds {len(tensors)} tensors, {METADATA_FILE} describes {len(heads)} heads")
    if heads and not all(math.isfinite(float(np.abs(head.weight).sum() + np.abs(head.bias).sum())) for head in heads):
        raise fail("a head has weights that are not finite")
    return heads, {key: value for key, value in metadata.items() if key != "heads"}
