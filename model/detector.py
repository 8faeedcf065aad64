"""Grounding DINO as a detector: images and Label Studio classes in, ``sv.Detections`` out."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import supervision as sv
import torch
from PIL import Image
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
from transformers.image_transforms import center_to_corners_format, get_size_with_aspect_ratio

from model.assignment import QueryClasses, assign_classes, phrase_token_masks
from model.config import DetectionSettings
from model.devices import inference_autocast, resolve_device
from model.postprocess import select_detections
from model.prompts import ClassSpec, Prompt, build_prompts
from model.slicing import View, image_views, split_batches
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
        source, device = str(source), resolve_device(device)
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
        ``build_prompts``); the boxes of all prompts are merged before NMS. With ``settings.slice_size``, an
        image's tiles are seen too and their boxes merged with its own (``model.slicing``).

        ``class_id`` indexes ``classes``; ``data["class_name"]`` holds the class names (never an alias);
        ``metadata["uncertainty"]`` is the image's score from ``uncertainty.threshold_margin``.
        """
        if not classes:
            return [_no_detections() for _ in images]
        class_names = [spec.name for spec in classes]
        views = image_views(images, settings)
        view_groups = self._pixel_batches([view.image for view in views], settings.image_size)
        if settings.slice_size:
            view_groups = split_batches(view_groups)

        # Per image, one entry per prompt and view: candidate boxes (pixels, xyxy in the image) and their classes.
        boxes_per_image: list[list[torch.Tensor]] = [[] for _ in images]
        queries_per_image: list[list[QueryClasses]] = [[] for _ in images]
        with self._lock:
            prompts = build_prompts(classes, self.processor.tokenizer, self.model.config.max_text_len)
            for prompt in prompts:
                phrase_masks = phrase_token_masks(prompt.input_ids, self.model.config.max_text_len)
                phrase_classes = torch.tensor(prompt.phrase_classes)
                for indices, pixel_values in view_groups:
                    token_probs, pred_boxes = self._forward(pixel_values, prompt, settings.cpu_precision)
                    queries = assign_classes(token_probs, phrase_masks, phrase_classes, settings.text_threshold)
                    for row, view_index in enumerate(indices):
                        view = views[view_index]
                        boxes_per_image[view.image_index].append(_in_image(pred_boxes[row], view))
                        queries_per_image[view.image_index].append(QueryClasses(*(field[row] for field in queries)))
        if not prompts:  # every class name was empty once cleaned
            return [_no_detections() for _ in images]

        results = []
        for image, boxes, queries in zip(images, boxes_per_image, queries_per_image):
            queries = QueryClasses(*(torch.cat(field) for field in zip(*queries)))
            detections = select_detections(
                torch.cat(boxes).numpy(),
                queries.confidence.numpy(),
                queries.class_id.numpy(),
                queries.passes_text_threshold.numpy(),
                class_names,
                image.size,
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
        image_processor = self.processor.image_processor
        groups: dict[tuple[int, int], tuple[list[int], list[torch.Tensor]]] = {}
        for index, image in enumerate(images):
            image, resized = self._reduce(image, image_size)
            # A reduced image is already at the processor's own size: its resize is skipped, not repeated.
            kwargs = {"do_resize": False} if resized else {}
            pixels = image_processor(images=image, return_tensors="pt", **kwargs)
            pixel_values = pixels["pixel_values"]
            indices, tensors = groups.setdefault(tuple(pixel_values.shape[-2:]), ([], []))
            indices.append(index)
            tensors.append(pixel_values)
        return [(indices, torch.cat(tensors)) for indices, tensors in groups.values()]

    def _reduce(self, image: Image.Image, image_size: int) -> tuple[Image.Image, bool]:
        """The RGB image at the size the processor resizes it to (``model_input_size``), with the processor's
        resampling filter, and whether it was resized here.

        The processor would turn the full image into arrays first (one uint8 copy, then a PIL copy to resize):
        resizing the PIL image before it keeps the memory per image near the decoded image's own. The pixels are
        the same, since the processor's PIL backend resizes with this same ``Image.resize`` call. RGB and L images
        are resized before their conversion to RGB (no full-size copy); other modes (palette, alpha) are
        converted first, as the processor would.
        """
        image_processor = self.processor.image_processor
        if not getattr(image_processor, "do_resize", True):
            return image.convert("RGB"), False
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        height, width = model_input_size(image.height, image.width, image_size, image_processor.size)
        if (width, height) != image.size:
            image = image.resize((width, height), resample=image_processor.resample)
        return (image if image.mode == "RGB" else image.convert("RGB")), True

    def _forward(self, pixel_values: torch.Tensor, prompt: Prompt,
                 cpu_precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
        """Token probabilities ``(batch, queries, max_text_len)`` and boxes ``(batch, queries, 4)``, on CPU."""
        input_ids = torch.tensor([prompt.input_ids] * len(pixel_values), device=self.device)
        with torch.inference_mode(), inference_autocast(self.device, cpu_precision):
            outputs = self.model(
                pixel_values=pixel_values.to(self.device),
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                token_type_ids=torch.zeros_like(input_ids),
            )
        return outputs.logits.float().sigmoid().cpu(), outputs.pred_boxes.float().cpu()


def model_input_size(height: int, width: int, image_size: int, default_size) -> tuple[int, int]:
    """``(height, width)`` the model sees for an image of ``height`` x ``width``: shortest edge ``image_size``
    (longest edge at most ``image_size * 1333 / 800``), or the processor's own ``default_size`` when
    ``image_size`` is 0. Computed by the helper the Grounding DINO image processor itself uses."""
    if image_size:
        shortest, longest = image_size, round(image_size * _LONGEST_TO_SHORTEST)
    else:
        shortest, longest = default_size["shortest_edge"], default_size["longest_edge"]
    return get_size_with_aspect_ratio((height, width), shortest, longest or shortest)


def weights_digest(model: torch.nn.Module) -> str:
    """12 hex chars of a sha256 over every tensor of the state dict (names, dtypes, shapes, bytes)."""
    sha = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        sha.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()[:12]


def _in_image(boxes: torch.Tensor, view: View) -> torch.Tensor:
    """A view's boxes (normalised cx, cy, w, h) as pixels xyxy in its image; a tile's are clipped to the tile."""
    width, height = view.image.size
    xyxy = center_to_corners_format(boxes) * torch.tensor([width, height, width, height])
    if view.is_tile:
        xyxy = torch.minimum(xyxy.clamp(min=0), torch.tensor([width, height, width, height]))
        xyxy = xyxy + torch.tensor([*view.offset, *view.offset])
    return xyxy


def _no_detections() -> sv.Detections:
    detections = sv.Detections.empty()
    detections.data["class_name"] = np.array([], dtype=str)
    detections.metadata["uncertainty"] = 1.0
    return detections
