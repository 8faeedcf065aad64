"""Label Studio regions <-> boxes and masks: the one place where regions become pixels and back.

Label Studio's rectangle ``value`` is ``x, y, width, height`` in percent of ``original_width/height`` (and a
rotation about the top-left corner); groundloop works in pixel corners ``[x1, y1, x2, y2]``. A brush region's
``value`` is ``{"format": "rle", "rle": [bytes]}``, Label Studio's own run-length code of the image's RGBA pixels
(label-studio-sdk's ``converter.brush``); a polygon's is ``{"points": [[x%, y%], ...], "closed": true}``.

A stored box is ``{"label", "box": [x1, y1, x2, y2], "from_name"}``; a brush or polygon region's also has
``"mask"``, the COCO compressed RLE of its pixels (``{"size": [h, w], "counts": str}``, pycocotools' encoding,
counts as text so it stores as JSON), and its ``"box"`` is that mask's bounding box, so the detector trains on
masks as on boxes. Detections are ``supervision.Detections`` with ``data["class_name"]`` (``confidence`` for
predictions; ``mask`` (N, H, W) bool at the image's size for controls that draw masks).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

MAX_PERCENT = 1000.0
"""Coordinates beyond ±1000 % of the image (or rotations beyond ±1000°) are no drawing, they are garbage."""
MAX_SIDE = 100_000
"""Pixels an image side may claim to have."""
MAX_MASK_PIXELS = 64_000_000
"""Pixels (``original_width * original_height``) of a brush or polygon region's image: a mask is decoded at the
image's full size, so a region from a webhook claiming a huge image could exhaust memory."""
MAX_RESULT_MASK_PIXELS = 2_000_000_000
"""Pixels of all the masks one result decodes (each mask at its image's size): 10 000 regions of a huge image
each would hold a webhook for many minutes; a few hundred masks of a photo are fine."""
MAX_RLE_BYTES = 2_000_000
"""Length of one brush region's ``rle``: label-studio-sdk's decoder walks it bit by bit, about 5 µs per byte here
(a 4000x3000 mask of a disc with speckles: 58 KB, 0.3 s), so this bounds one region to about 10 s ..."""
MAX_RESULT_RLE_BYTES = 4_000_000
"""... and this the brush codes of one result (a webhook) to about 20 s."""
MAX_POLYGON_POINTS = 10_000
"""Points of one polygon region read."""
POLYGON_POINTS = 100
"""Points at most of a polygon region we write (the mask's outline simplified); at least 3."""

if TYPE_CHECKING:
    import supervision as sv

    from active_learning.labelstudio.config import ProjectSchema, LabelsControl


def boxes_from_result(result: list[dict[str, Any]], where: str = "result",
                      size: tuple[int, int] | None = None) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
    """Pixel boxes of the ``rectanglelabels``, ``brushlabels`` and ``polygonlabels`` regions, and the image size
    the result gives (else ``size``, which also serves regions without one).

    A rotated rectangle becomes its axis-aligned bounding box. A brush or polygon region becomes its mask (a COCO
    RLE, decoded or rasterized at the image's size) with the mask's bounding box; an empty mask gives no box. One
    box per label when a region carries several; a region without labels gives none. Other region types are
    skipped (kept raw). Raises ValueError naming the region for anything malformed, non-finite numbers included,
    and for masks of images over ``MAX_MASK_PIXELS`` pixels (refused before decoding).
    """
    boxes: list[dict[str, Any]] = []
    if not isinstance(result, list):
        raise ValueError(f"{where}: expected a list of regions")
    decoded = [0, 0]  # mask pixels and brush code bytes decoded so far, against the MAX_RESULT_* limits
    for i, region in enumerate(result):
        if not isinstance(region, dict):
            raise ValueError(f"{where}[{i}]: expected an object")
        if "original_width" in region or "original_height" in region:
            width, height = region.get("original_width"), region.get("original_height")
            if not all(_finite(v) and 0 < v <= MAX_SIDE for v in (width, height)):
                raise ValueError(f"{where}[{i}].original_width/height: expected positive numbers up to {MAX_SIDE}")
            size = (int(width), int(height))
        kind = region.get("type")
        if kind in ("brushlabels", "polygonlabels"):
            boxes.extend(_mask_boxes(region, kind, f"{where}[{i}]", size, decoded))
            continue
        if kind != "rectanglelabels":
            continue
        value = region.get("value")
        if not isinstance(value, dict) or size is None:
            raise ValueError(f"{where}[{i}]: a rectanglelabels region needs value and original_width/height")
        try:
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
            rotation = float(value.get("rotation") or 0.0)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}[{i}].value: needs numeric x, y, width, height") from None
        if not all(math.isfinite(v) and abs(v) <= MAX_PERCENT for v in (x, y, w, h, rotation)) or w < 0 or h < 0:
            raise ValueError(f"{where}[{i}].value: x, y, width, height and rotation must be finite numbers within "
                             f"±{MAX_PERCENT:g} (percent of the image; degrees), width and height not negative")
        labels = value.get("rectanglelabels") or []
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError(f"{where}[{i}].value.rectanglelabels: expected a list of strings")
        box = _pixel_box(x, y, w, h, rotation, size)
        for label in labels:
            boxes.append({"label": label, "box": box, "from_name": region.get("from_name")})
    return boxes, size


def regions_from_detections(detections: "sv.Detections", schema: "ProjectSchema", width: int, height: int, *,
                            control: str | None = None,
                            threshold: Callable[["LabelsControl", str], float | None] | None = None,
                            ) -> list[dict[str, Any]]:
    """Detections -> Label Studio regions: rectangles in percent clipped to the image, brush RLEs, polygons.

    Each detection becomes a region of every control that offers its label (a phrase no control offers, typed in
    an interactive prompt, goes to the first control), or of ``control`` alone when given, of that control's kind:
    ``rectanglelabels`` from its box; ``brushlabels`` (Label Studio's RLE of the mask) or ``polygonlabels`` (the
    outline of the mask's largest part, simplified to at most ``POLYGON_POINTS`` points, in percent) from its
    mask in ``detections.mask``, which must then be (N, height, width). A detection whose box is empty gets no
    rectangle, one whose mask is empty (or too small to outline) no brush or polygon region; without masks
    (``detections.mask`` None) mask controls get no regions: callers segment before when the schema has a mask
    control. ``threshold(control, label)`` (a job's ``Job.threshold``) drops detections whose confidence does not
    exceed it, and every detection of a label it answers None for. Region ids run across all controls.
    """
    regions: list[dict[str, Any]] = []
    scores, masks, label_scores = detections.confidence, detections.mask, detections.data.get("label_score")
    if masks is not None and tuple(masks.shape[1:]) != (height, width):
        raise ValueError(f"detections.mask has shape {tuple(masks.shape)}, not (N, {height}, {width}) of the image")
    for i, (x1, y1, x2, y2) in enumerate(detections.xyxy.tolist()):
        x1, x2 = (min(max(v, 0.0), width) for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), height) for v in (y1, y2))
        label = str(detections.data["class_name"][i])
        targets = [schema.control(control)] if control else schema.controls_for(label)
        shapes: dict[str, dict[str, Any] | None] = {}  # one encoding per kind for this detection
        for target in targets:
            bar = threshold(target, label) if threshold else -1.0
            if bar is None or (scores is not None and scores[i] <= bar):
                continue
            if target.kind not in shapes:
                if target.kind == "rectanglelabels":
                    shapes[target.kind] = _rectangle_value(x1, y1, x2, y2, width, height)
                elif masks is None:
                    shapes[target.kind] = None
                elif target.kind == "brushlabels":
                    shapes[target.kind] = _brush_value(masks[i])
                else:
                    shapes[target.kind] = _polygon_value(masks[i], width, height)
            shape = shapes[target.kind]
            if shape is None:
                continue
            region = {
                "id": f"r{len(regions)}",
                "from_name": target.name,
                "to_name": schema.image_name,
                "type": target.kind,
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {**shape, target.kind: [label]},
            }
            if scores is not None:  # a custom label's box: the box's score times its label's (``labeling``)
                region["score"] = float(scores[i]) * float(label_scores[i] if label_scores is not None else 1.0)
            regions.append(region)
    return regions


def _rectangle_value(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> dict[str, Any] | None:
    if x2 <= x1 or y2 <= y1:
        return None
    return {"x": 100.0 * x1 / width, "y": 100.0 * y1 / height, "width": 100.0 * (x2 - x1) / width,
            "height": 100.0 * (y2 - y1) / height, "rotation": 0}


def _brush_value(mask: np.ndarray) -> dict[str, Any] | None:
    from label_studio_sdk.converter.brush import mask2rle

    if not mask.any():
        return None
    return {"format": "rle", "rle": [int(b) for b in mask2rle(mask.astype(np.uint8) * np.uint8(255))]}


def _polygon_value(mask: np.ndarray, width: int, height: int) -> dict[str, Any] | None:
    import cv2
    import supervision as sv

    outlines = sv.mask_to_polygons(mask.astype(bool))
    if not outlines:
        return None
    outline = max(outlines, key=lambda p: (cv2.contourArea(p.reshape(-1, 1, 2).astype(np.float32)), len(p)))
    points = outline.astype(np.float32)
    if len(points) > POLYGON_POINTS:
        epsilon, simpler = 0.5, points
        while len(simpler) > POLYGON_POINTS:
            simpler = cv2.approxPolyDP(points.reshape(-1, 1, 2), epsilon, True).reshape(-1, 2)
            epsilon *= 1.5
        if len(simpler) < 3:  # collapsed in one step: an even subsample keeps the outline
            simpler = points[np.linspace(0, len(points) - 1, POLYGON_POINTS).astype(int)]
        points = simpler
    # Contour points are pixel indices; a pixel's centre is half a pixel further in percent of the image.
    xs = np.clip((points[:, 0].astype(float) + 0.5) * 100.0 / width, 0.0, 100.0)
    ys = np.clip((points[:, 1].astype(float) + 0.5) * 100.0 / height, 0.0, 100.0)
    return {"points": [[round(float(x), 4), round(float(y), 4)] for x, y in zip(xs, ys)], "closed": True}


def _mask_boxes(region: dict[str, Any], kind: str, where: str, size: tuple[int, int] | None,
                decoded: list[int]) -> list[dict[str, Any]]:
    """The boxes (with masks) of one brush or polygon region; see ``boxes_from_result``."""
    value = region.get("value")
    if not isinstance(value, dict) or size is None:
        raise ValueError(f"{where}: a {kind} region needs value and original_width/height")
    labels = value.get(kind) or []
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError(f"{where}.value.{kind}: expected a list of strings")
    width, height = size
    if width * height > MAX_MASK_PIXELS:
        raise ValueError(f"{where}: its image of {width}x{height} pixels is more than the {MAX_MASK_PIXELS} "
                         "pixels groundloop decodes a mask at")
    if not labels:
        return []
    decoded[0] += width * height
    if decoded[0] > MAX_RESULT_MASK_PIXELS:
        raise ValueError(f"{where}: the result's masks add up to more than the {MAX_RESULT_MASK_PIXELS} pixels "
                         "groundloop decodes for one annotation")
    if kind == "brushlabels":
        decoded[1] += len(value.get("rle") or ()) if isinstance(value.get("rle"), list) else 0
        if decoded[1] > MAX_RESULT_RLE_BYTES:
            raise ValueError(f"{where}: the result's brush codes add up to more than the {MAX_RESULT_RLE_BYTES} "
                             "bytes groundloop decodes for one annotation")
        rle = _brush_mask(value, where, width, height)
    else:
        rle = _polygon_mask(value, where, width, height)
    if rle is None:
        return []
    from pycocotools import mask as coco_mask

    x, y, w, h = (float(v) for v in coco_mask.toBbox(rle))
    box = [round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)]
    counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
    return [{"label": label, "box": box, "from_name": region.get("from_name"),
             "mask": {"size": [int(v) for v in rle["size"]], "counts": counts}} for label in labels]


def _brush_mask(value: dict[str, Any], where: str, width: int, height: int) -> dict[str, Any] | None:
    """The COCO RLE of a brush region's pixels (its alpha channel, decoded by label-studio-sdk), None when no pixel
    is set."""
    from label_studio_sdk.converter.brush import decode_rle
    from pycocotools import mask as coco_mask

    if value.get("format", "rle") != "rle":
        raise ValueError(f"{where}.value.format: expected \"rle\", got {str(value.get('format'))[:40]!r}")
    rle = value.get("rle")
    if not isinstance(rle, list) or not 7 <= len(rle) <= MAX_RLE_BYTES:
        raise ValueError(f"{where}.value.rle: expected a list of 7 to {MAX_RLE_BYTES} bytes")
    array = np.asarray(rle)
    if array.dtype.kind not in "iu" or array.min() < 0 or array.max() > 255:
        raise ValueError(f"{where}.value.rle: expected integers 0 to 255")
    data = array.astype(np.uint8).tobytes()
    values = int.from_bytes(data[:4], "big")
    if values != width * height * 4:
        raise ValueError(f"{where}.value.rle: encodes {values} values, not the {width}x{height}x4 RGBA values of "
                         "its image (original_width/height)")
    try:
        rgba = decode_rle(data)
    except Exception:  # noqa: BLE001 - the SDK's decoder raises whatever a broken bit string makes it hit
        rgba = None
    if rgba is None or rgba.size != values:
        raise ValueError(f"{where}.value.rle: not a complete Label Studio brush code of {values} values")
    alpha = rgba.reshape(height, width, 4)[:, :, 3] > 0  # Label Studio's editor may paint colours differently
    if not alpha.any():
        return None
    return coco_mask.encode(np.asfortranarray(alpha.view(np.uint8)))


def _polygon_mask(value: dict[str, Any], where: str, width: int, height: int) -> dict[str, Any] | None:
    """The COCO RLE of a polygon region rasterized at the image's size, None when it covers no pixel."""
    from pycocotools import mask as coco_mask

    points = value.get("points")
    if not isinstance(points, list) or not 3 <= len(points) <= MAX_POLYGON_POINTS:
        raise ValueError(f"{where}.value.points: expected a list of 3 to {MAX_POLYGON_POINTS} [x, y] points")
    flat: list[float] = []
    for point in points:
        if not (isinstance(point, (list, tuple)) and len(point) == 2
                and all(_finite(v) and abs(v) <= MAX_PERCENT for v in point)):
            raise ValueError(f"{where}.value.points: each point must be [x, y], finite percentages within "
                             f"±{MAX_PERCENT:g}")
        flat += [float(point[0]) * width / 100.0, float(point[1]) * height / 100.0]
    rle = coco_mask.merge(coco_mask.frPyObjects([flat], height, width))
    return rle if coco_mask.area(rle) > 0 else None


def _pixel_box(x: float, y: float, w: float, h: float, rotation: float, size: tuple[int, int]) -> list[float]:
    sx, sy = size[0] / 100.0, size[1] / 100.0
    x, y, w, h = x * sx, y * sy, w * sx, h * sy
    if rotation:
        cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    else:
        xs, ys = [x, x + w], [y, y + h]
    return [
        round(max(0.0, min(xs)), 2),
        round(max(0.0, min(ys)), 2),
        round(min(float(size[0]), max(xs)), 2),
        round(min(float(size[1]), max(ys)), 2),
    ]




def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
