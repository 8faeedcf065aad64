"""Grounding DINO as a detector: images and Label Studio classes in, ``sv.Detections`` out."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import supervision as sv
import torch
from PIL import Image
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
from transformers.image_transforms import center_to_corners_format

from model.assignment import QueryClasses, assign_classes, phrase_token_masks
from model.config import DetectionSettings
from model.postprocess import select_detections
from model.prompts import ClassSpec, Prompt, build_prompts
from model.uncertainty import threshold_margin

# The released processors resize to shortest edge 800, longest 1333; a custom size keeps that ratio.
_LONGEST_TO_SHORTEST = 1333 / 800


class Detector:
    """A loaded model and its processor. ``detect`` may be called from several threads at once."""

    def __init__(self, model, processor, source: str, device: torch.device, version_digest: str):
        self.model = model
        self.processor = processor
        self.source = source
        self.device = device
        self.version_digest = version_digest
        # One forward at a time: parallel forwards would only fight over the same cores or GPU memory,
        # and a tokenizer shared between threads can fail ("Already borrowed").
        self._lock = threading.Lock()

    @classmethod
    def load(cls, source: str | Path, device: str = "auto") -> "Detector":
        """Load a hub id or a ``save_pretrained`` directory. ``device="auto"``: CUDA when present, else CPU."""
        source = str(source)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForZeroShotObjectDetection.from_pretrained(source)
        # The PIL image processor gives the same pixels whether or not torchvision is installed.
        processor = AutoProcessor.from_pretrained(source, backend="pil")
        version_digest = weights_digest(model)
        model.to(device).eval()
        return cls(model, processor, source, torch.device(device), version_digest)

    def detect(
        self,
        images: Sequence[Image.Image],
        classes: Sequence[ClassSpec],
        settings: DetectionSettings = DetectionSettings(),
    ) -> list[sv.Detections]:
        """One ``sv.Detections`` per image, in order.

        Images resized to the same shape go through the model as one batch, once per prompt (see
        ``build_prompts``); the boxes of all prompts are merged before NMS.

        ``class_id`` indexes ``classes``; ``data["class_name"]`` holds the class names (never an alias);
        ``metadata["uncertainty"]`` is the image's score from ``uncertainty.threshold_margin``.
        """
        if not classes:
            return [_no_detections() for _ in images]
        class_names = [spec.name for spec in classes]
        image_groups = self._pixel_batches(images, settings.image_size)

        # Per image, one entry per prompt: candidate boxes (normalised cx, cy, w, h) and their classes.
        boxes_per_image: list[list[torch.Tensor]] = [[] for _ in images]
        queries_per_image: list[list[QueryClasses]] = [[] for _ in images]
        with self._lock:
            prompts = build_prompts(classes, self.processor.tokenizer, self.model.config.max_text_len)
            for prompt in prompts:
                phrase_masks = phrase_token_masks(prompt.input_ids, self.model.config.max_text_len)
                phrase_classes = torch.tensor(prompt.phrase_classes)
                for indices, pixel_values in image_groups:
                    token_probs, pred_boxes = self._forward(pixel_values, prompt)
                    queries = assign_classes(token_probs, phrase_masks, phrase_classes, settings.text_threshold)
                    for row, image_index in enumerate(indices):
                        boxes_per_image[image_index].append(pred_boxes[row])
                        queries_per_image[image_index].append(QueryClasses(*(field[row] for field in queries)))
        if not prompts:  # every class name was empty once cleaned
            return [_no_detections() for _ in images]

        results = []
        for image, boxes, queries in zip(images, boxes_per_image, queries_per_image):
            width, height = image.size
            xyxy = center_to_corners_format(torch.cat(boxes)) * torch.tensor([width, height, width, height])
            queries = QueryClasses(*(torch.cat(field) for field in zip(*queries)))
            detections = select_detections(
                xyxy.numpy(),
                queries.confidence.numpy(),
                queries.class_id.numpy(),
                queries.passes_text_threshold.numpy(),
                class_names,
                (width, height),
                settings,
            )
            detections.metadata["uncertainty"] = float(threshold_margin(queries.confidence, settings.box_threshold))
            results.append(detections)
        return results

    def _pixel_batches(
        self, images: Sequence[Image.Image], image_size: int
    ) -> list[tuple[list[int], torch.Tensor]]:
        """Preprocess every image; batch together those resized to the same shape.

        Images of different shapes are NOT padded into one batch: the Swin backbone takes no pixel mask,
        so padding changes the features near the border and the boxes (measured: by up to 0.75 of the
        image). Same-shape batches give the same results as single images.
        """
        size = {}
        if image_size:
            size = {"size": {"shortest_edge": image_size, "longest_edge": round(image_size * _LONGEST_TO_SHORTEST)}}
        groups: dict[tuple[int, int], tuple[list[int], list[torch.Tensor]]] = {}
        for index, image in enumerate(images):
            pixels = self.processor.image_processor(images=image.convert("RGB"), return_tensors="pt", **size)
            pixel_values = pixels["pixel_values"]
            indices, tensors = groups.setdefault(tuple(pixel_values.shape[-2:]), ([], []))
            indices.append(index)
            tensors.append(pixel_values)
        return [(indices, torch.cat(tensors)) for indices, tensors in groups.values()]

    def _forward(self, pixel_values: torch.Tensor, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
        """Token probabilities ``(batch, queries, max_text_len)`` and boxes ``(batch, queries, 4)``, on CPU."""
        input_ids = torch.tensor([prompt.input_ids] * len(pixel_values), device=self.device)
        with torch.inference_mode(), self._autocast():
            outputs = self.model(
                pixel_values=pixel_values.to(self.device),
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                token_type_ids=torch.zeros_like(input_ids),
            )
        return outputs.logits.float().sigmoid().cpu(), outputs.pred_boxes.float().cpu()

    def _autocast(self):
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)


def weights_digest(model: torch.nn.Module) -> str:
    """12 hex chars of a sha256 over every tensor of the state dict (names, dtypes, shapes, bytes)."""
    sha = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        sha.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()[:12]


def _no_detections() -> sv.Detections:
    detections = sv.Detections.empty()
    detections.data["class_name"] = np.array([], dtype=str)
    detections.metadata["uncertainty"] = 1.0
    return detections
