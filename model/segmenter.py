"""Segment Anything as a segmenter: boxes (Grounding DINO's, or a drawn one) or clicks in, boolean masks out.

This is the "SAM" half of Grounded SAM. Any box-promptable SAM-family model that transformers ships loads here
(SAM, SAM-HQ, SAM 2, EdgeTAM), from a hub id or a ``save_pretrained`` directory.
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForMaskGeneration, AutoProcessor

from model.detector import weights_digest
from model.devices import inference_autocast, resolve_device

# The mask decoder is cheap next to the image encoder, but its activations grow with the number of prompts:
# boxes go through it this many at a time.
DECODER_CHUNK = 64
# Float32 pixels that post-processing may hold at once (64 MB). A 4000 x 3000 image is upsampled one mask at a
# time; a 640 x 480 one about fifty at a time.
UPSAMPLE_PIXELS = 1 << 24


class Segmenter:
    """A loaded SAM-family model and its processor. ``segment_*`` may be called from several threads at once."""

    def __init__(self, model, processor, source: str, device: torch.device, version_digest: str):
        self.model = model
        self.processor = processor
        self.source = source
        self.device = device
        self.version_digest = version_digest
        # One forward at a time: parallel forwards would only fight over the same cores or GPU memory.
        self._lock = threading.Lock()
        # SAM-HQ's mask decoder also reads the ViT's intermediate features, which its forward takes separately.
        self._takes_intermediate = "intermediate_embeddings" in inspect.signature(model.forward).parameters

    @classmethod
    def load(cls, source: str | Path, device: str = "auto") -> "Segmenter":
        """Load a hub id or a ``save_pretrained`` directory. ``device="auto"``: CUDA when present, else CPU."""
        source, device = str(source), resolve_device(device)
        model = AutoModelForMaskGeneration.from_pretrained(source)
        processor = AutoProcessor.from_pretrained(source)
        version_digest = weights_digest(model)
        model.to(device).eval()
        return cls(model, processor, source, torch.device(device), version_digest)

    def segment_boxes(self, image: Image.Image, xyxy: np.ndarray) -> np.ndarray:
        """One ``(H, W)`` bool mask per box of ``xyxy`` (``(N, 4)`` pixels on ``image``): ``(N, H, W)``.

        The image goes through the vision encoder once, whatever N; its boxes then go through the prompt encoder
        and mask decoder ``DECODER_CHUNK`` at a time, one mask each (``multimask_output=False``).
        """
        xyxy = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
        if not len(xyxy):
            return np.zeros((0, image.height, image.width), dtype=bool)
        model_image, scale = self._reduce(image)
        inputs = self.processor(images=model_image, input_boxes=[(xyxy * np.tile(scale, 2)).tolist()],
                                return_tensors="pt")
        boxes = inputs.pop("input_boxes")
        with self._lock:
            embedding = self._embed(inputs["pixel_values"])
            low_res = torch.cat([
                self._decode(embedding, input_boxes=boxes[:, start:start + DECODER_CHUNK])
                for start in range(0, boxes.shape[1], DECODER_CHUNK)
            ])
        return self._full_size(low_res, inputs, image.size)

    def segment_points(
        self, image: Image.Image, points: np.ndarray, labels: np.ndarray, box: np.ndarray | None = None
    ) -> np.ndarray:
        """One ``(H, W)`` bool mask for one object, prompted by clicks and/or a box, as Label Studio's interactive
        tools send them: ``points`` ``(K, 2)`` pixel x, y with ``labels`` ``(K,)`` (1 positive, 0 negative), and
        ``box`` ``(4,)`` pixel x1, y1, x2, y2. Either may be empty (or ``box`` None), not both."""
        points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        box = None if box is None or np.size(box) == 0 else np.asarray(box, dtype=np.float32).reshape(4)
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} points but {len(labels)} labels")
        if not len(points) and box is None:
            raise ValueError("segment_points needs at least one point or a box")
        model_image, scale = self._reduce(image)
        prompts = {}
        if len(points):
            prompts.update(input_points=[[(points * scale).tolist()]], input_labels=[[labels.tolist()]])
        if box is not None:
            prompts["input_boxes"] = [[(box * np.tile(scale, 2)).tolist()]]
        inputs = self.processor(images=model_image, return_tensors="pt", **prompts)
        prompt_tensors = {name: inputs.pop(name) for name in ("input_points", "input_labels", "input_boxes")
                          if name in inputs}
        with self._lock:
            low_res = self._decode(self._embed(inputs["pixel_values"]), **prompt_tensors)
        return self._full_size(low_res, inputs, image.size)[0]

    def _embed(self, pixel_values: torch.Tensor) -> dict:
        """The forward's image-embedding arguments, from one vision-encoder pass. The one place where the model
        kinds differ: SAM gives a tensor, SAM 2 and EdgeTAM a list of feature maps (both go in
        ``image_embeddings``), SAM-HQ a pair whose second half goes in ``intermediate_embeddings``."""
        with torch.inference_mode(), inference_autocast(self.device):
            embeddings = self.model.get_image_embeddings(pixel_values.to(self.device))
        if self._takes_intermediate:
            embeddings, intermediate = embeddings
            return {"image_embeddings": embeddings, "intermediate_embeddings": intermediate}
        return {"image_embeddings": embeddings}

    def _decode(self, embedding: dict, **prompts: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits ``(prompts, 1, h, w)``, float32 on CPU, for one image's prompt batch."""
        prompts = {name: tensor.to(self.device) for name, tensor in prompts.items()}
        with torch.inference_mode(), inference_autocast(self.device):
            outputs = self.model(**embedding, **prompts, multimask_output=False)
        return outputs.pred_masks[0].float().cpu()

    def _reduce(self, image: Image.Image) -> tuple[Image.Image, np.ndarray]:
        """The RGB image no larger than the model's input side, and the ``(x, y)`` factors its pixels were scaled by.

        The processor would turn the full image into float arrays before resizing it (about 1 GB for a
        10000 x 8000 photo); resizing the PIL image first, as the processor's PIL backend would, keeps the memory
        per image near the decoded image's own. Prompts are scaled by the factors; ``_full_size`` upsamples the
        masks to the original size.
        """
        image = _rgb(image)
        size = self.processor.image_processor.size
        side = getattr(size, "longest_edge", None) or max(size.height or 0, size.width or 0)  # SAM 2: a square
        if not side or max(image.size) <= side:
            return image, np.ones(2, dtype=np.float32)
        factor = side / max(image.size)
        reduced = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        resample = getattr(self.processor.image_processor, "resample", None)
        image_reduced = image.resize(reduced, resample=Image.Resampling.BILINEAR if resample is None else resample)
        return image_reduced, np.array([reduced[0] / image.width, reduced[1] / image.height], dtype=np.float32)

    def _full_size(self, low_res: torch.Tensor, inputs, image_size: tuple[int, int]) -> np.ndarray:
        """``(N, H, W)`` bool masks at ``image_size`` (the original image's, before ``_reduce``), binarised by the
        processor's own ``post_process_masks`` (at its default threshold), a few masks at a time so that float
        masks never fill memory."""
        width, height = image_size
        # SAM and SAM-HQ pad the image and must crop the padding off; SAM 2's processor has no such argument.
        sizes = {name: inputs[name] for name in ("original_sizes", "reshaped_input_sizes") if name in inputs}
        sizes["original_sizes"] = torch.tensor([[height, width]])
        pad = getattr(self.processor.image_processor, "pad_size", None) or {"height": 0, "width": 0}
        per_mask = height * width + pad["height"] * pad["width"]  # SAM upsamples to the padded size first
        step = max(1, UPSAMPLE_PIXELS // per_mask)
        masks = np.empty((len(low_res), height, width), dtype=bool)
        for start in range(0, len(low_res), step):
            (chunk,) = self.processor.post_process_masks([low_res[start:start + step]], **sizes)
            masks[start:start + step] = chunk[:, 0].numpy()
        return masks


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
