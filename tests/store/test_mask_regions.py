"""Brush and polygon regions <-> masks (``active_learning.labelstudio.regions``): round trips through Label
Studio's own RLE and through polygons, a mixed config, and malformed or oversized regions from webhooks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import supervision as sv
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from pycocotools import mask as coco_mask

from active_learning.labelstudio.config import parse_label_config
from active_learning.labelstudio.regions import (MAX_MASK_PIXELS, POLYGON_POINTS, boxes_from_result,
                                                 regions_from_detections)

WIDTH, HEIGHT = 160, 96  # not square: a swapped width and height shows

MIXED = parse_label_config(
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="boxes" toName="image"><Label value="cat"/></RectangleLabels>'
    '<BrushLabels name="brush" toName="image"><Label value="cat"/></BrushLabels>'
    '<PolygonLabels name="outline" toName="image"><Label value="cat"/></PolygonLabels>'
    '<KeyPointLabels name="click" toName="image" smart="true"><Label value="cat"/></KeyPointLabels>'
    '</View>')


def only(kind: str):
    tag = {"brushlabels": "BrushLabels", "polygonlabels": "PolygonLabels"}[kind]
    return parse_label_config(f'<View><Image name="image" value="$image"/><{tag} name="m" toName="image">'
                              f'<Label value="cat"/><Label value="dog"/></{tag}></View>')


def disc(cx: float, cy: float, r: float, size=(WIDTH, HEIGHT)) -> np.ndarray:
    yy, xx = np.mgrid[:size[1], :size[0]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2


def square(x1: int, y1: int, x2: int, y2: int, size=(WIDTH, HEIGHT)) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def detections(*masks: np.ndarray, labels=None, scores=None) -> sv.Detections:
    stack = np.stack(masks)
    return sv.Detections(xyxy=sv.mask_to_xyxy(stack).astype(float), mask=stack,
                         confidence=np.array(scores or [0.9] * len(masks)),
                         data={"class_name": np.array(labels or ["cat"] * len(masks))})


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def from_coco(mask: dict) -> np.ndarray:
    return coco_mask.decode({"size": mask["size"], "counts": mask["counts"]}).astype(bool)


def bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_brush_region_decodes_to_the_same_mask_at_the_image_size() -> None:
    mask = disc(50, 40, 25) | square(120, 10, 150, 20)  # two parts: a brush keeps both
    [region] = regions_from_detections(detections(mask), only("brushlabels"), WIDTH, HEIGHT)

    assert region["type"] == "brushlabels" and region["from_name"] == "m" and region["to_name"] == "image"
    assert (region["original_width"], region["original_height"], region["score"]) == (WIDTH, HEIGHT, 0.9)
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["cat"]
    assert all(isinstance(b, int) and 0 <= b <= 255 for b in region["value"]["rle"])
    rgba = decode_rle(region["value"]["rle"])
    assert rgba.size == WIDTH * HEIGHT * 4
    np.testing.assert_array_equal(rgba.reshape(HEIGHT, WIDTH, 4)[:, :, 3] > 0, mask)

    [stored], size = boxes_from_result([region])
    assert size == (WIDTH, HEIGHT) and stored["label"] == "cat" and stored["from_name"] == "m"
    assert stored["mask"]["size"] == [HEIGHT, WIDTH] and isinstance(stored["mask"]["counts"], str)
    np.testing.assert_array_equal(from_coco(stored["mask"]), mask)
    assert stored["box"] == bbox(mask)


def test_the_alpha_channel_of_a_brush_code_decides() -> None:
    """Label Studio's frontend may paint colour and alpha differently; a pixel is in the mask when its alpha is."""
    from label_studio_sdk.converter.brush import encode_rle

    rgba = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    rgba[1, 2] = (255, 0, 0, 255)
    rgba[3, 0] = (0, 0, 0, 128)
    rgba[0, 4] = (200, 200, 200, 0)
    region = brush_region(np.zeros((1, 1), bool), original_width=WIDTH, original_height=HEIGHT)
    region["value"]["rle"] = [int(b) for b in encode_rle(rgba.ravel())]
    [box] = boxes_from_result([region])[0]
    np.testing.assert_array_equal(from_coco(box["mask"]), rgba[:, :, 3] > 0)


@pytest.mark.parametrize("mask", [disc(70, 50, 30), square(20, 15, 100, 80)], ids=["disc", "square"])
def test_polygon_region_outlines_the_mask(mask: np.ndarray) -> None:
    [region] = regions_from_detections(detections(mask), only("polygonlabels"), WIDTH, HEIGHT)

    assert region["type"] == "polygonlabels" and region["value"]["closed"] is True
    assert region["value"]["polygonlabels"] == ["cat"]
    points = np.array(region["value"]["points"])
    assert points.ndim == 2 and points.shape[1] == 2 and 3 <= len(points) <= POLYGON_POINTS
    assert ((points >= 0) & (points <= 100)).all()

    [stored], _ = boxes_from_result([region])
    assert iou(from_coco(stored["mask"]), mask) > 0.9
    np.testing.assert_allclose(stored["box"], bbox(mask), atol=1.5)


def test_polygon_of_a_ragged_mask_is_simplified_to_the_cap() -> None:
    rng = np.random.default_rng(1)
    angles = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    radius = 35 + 8 * rng.random(400)  # a star with 400 spikes: thousands of contour points
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    theta = np.arctan2(yy - 48, xx - 80) % (2 * np.pi)
    mask = np.hypot(xx - 80, yy - 48) < radius[(theta / (2 * np.pi) * 400).astype(int) % 400]
    assert len(max(sv.mask_to_polygons(mask), key=len)) > POLYGON_POINTS

    [region] = regions_from_detections(detections(mask), only("polygonlabels"), WIDTH, HEIGHT)
    points = region["value"]["points"]
    assert 3 <= len(points) <= POLYGON_POINTS
    [stored], _ = boxes_from_result([region])
    assert iou(from_coco(stored["mask"]), mask) > 0.8


def test_polygon_at_the_image_edge_stays_inside_0_to_100() -> None:
    mask = square(0, 0, WIDTH, HEIGHT)
    [region] = regions_from_detections(detections(mask), only("polygonlabels"), WIDTH, HEIGHT)
    points = np.array(region["value"]["points"])
    assert ((points >= 0) & (points <= 100)).all() and points.max() > 99


def test_mixed_config_gives_each_control_its_own_kind_of_region() -> None:
    mask = disc(60, 50, 20)
    regions = regions_from_detections(detections(mask, disc(120, 30, 10)), MIXED, WIDTH, HEIGHT)

    assert [(r["from_name"], r["type"]) for r in regions] == [
        ("boxes", "rectanglelabels"), ("brush", "brushlabels"), ("outline", "polygonlabels")] * 2
    assert [r["id"] for r in regions] == [f"r{i}" for i in range(6)]  # one counter across controls
    assert "click" not in {r["from_name"] for r in regions}  # a smart tool is never pre-annotated
    rectangle, brush, polygon = regions[:3]
    assert rectangle["value"]["rectanglelabels"] == ["cat"]
    x1, y1, x2, y2 = sv.mask_to_xyxy(mask[None])[0]  # the detection's box, as today
    np.testing.assert_allclose([rectangle["value"][k] for k in ("x", "y", "width", "height")],
                               [100 * x1 / WIDTH, 100 * y1 / HEIGHT, 100 * (x2 - x1) / WIDTH,
                                100 * (y2 - y1) / HEIGHT])
    stored, _ = boxes_from_result(regions[:3])
    assert [b["from_name"] for b in stored] == ["boxes", "brush", "outline"]
    assert "mask" not in stored[0]
    np.testing.assert_array_equal(from_coco(stored[1]["mask"]), mask)
    assert iou(from_coco(stored[2]["mask"]), mask) > 0.9


def test_empty_or_missing_masks_give_no_mask_regions() -> None:
    empty = np.zeros((HEIGHT, WIDTH), dtype=bool)
    found = sv.Detections(xyxy=np.array([[10.0, 10, 50, 50]]), mask=empty[None],
                          data={"class_name": np.array(["cat"])})
    assert [r["type"] for r in regions_from_detections(found, MIXED, WIDTH, HEIGHT)] == ["rectanglelabels"]

    unmasked = sv.Detections(xyxy=np.array([[10.0, 10, 50, 50]]), data={"class_name": np.array(["cat"])})
    assert [r["type"] for r in regions_from_detections(unmasked, MIXED, WIDTH, HEIGHT)] == ["rectanglelabels"]


def test_mask_of_another_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"detections.mask has shape"):
        regions_from_detections(detections(disc(10, 10, 5, size=(HEIGHT, WIDTH))), MIXED, WIDTH, HEIGHT)


def test_threshold_and_labels_as_for_rectangles() -> None:
    found = detections(disc(40, 40, 10), disc(100, 40, 10), labels=["cat", "dog"], scores=[0.3, 0.8])
    regions = regions_from_detections(found, only("brushlabels"), WIDTH, HEIGHT, threshold=lambda c, label: 0.5)
    assert [(r["value"]["brushlabels"], r["score"]) for r in regions] == [(["dog"], 0.8)]


def brush_region(mask: np.ndarray, **changes) -> dict:
    region = {"id": "a", "type": "brushlabels", "from_name": "m", "to_name": "image",
              "original_width": mask.shape[1], "original_height": mask.shape[0],
              "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["cat"]}}
    region.update(changes)
    return region


def polygon_region(points, **changes) -> dict:
    region = {"id": "p", "type": "polygonlabels", "from_name": "m", "to_name": "image", "original_width": WIDTH,
              "original_height": HEIGHT, "value": {"points": points, "closed": True, "polygonlabels": ["cat"]}}
    region.update(changes)
    return region


def test_label_studio_polygon_in_percent_becomes_its_mask_and_box() -> None:
    # A triangle over the left half: (0, 0), (50 %, 0), (0, 100 %).
    [stored], _ = boxes_from_result([polygon_region([[0, 0], [50, 0], [0, 100]])])
    mask = from_coco(stored["mask"])
    assert mask.shape == (HEIGHT, WIDTH)
    assert abs(mask.sum() - WIDTH / 2 * HEIGHT / 2) < 0.05 * WIDTH * HEIGHT / 4
    np.testing.assert_allclose(stored["box"], [0, 0, WIDTH / 2, HEIGHT], atol=1.5)


def test_regions_without_labels_or_pixels_give_no_box() -> None:
    mask = disc(50, 40, 10)
    unlabeled = brush_region(mask)
    unlabeled["value"]["brushlabels"] = []
    empty = brush_region(np.zeros((HEIGHT, WIDTH), dtype=bool))
    outside = polygon_region([[200, 200], [300, 200], [300, 300]])  # wholly off the image
    assert boxes_from_result([unlabeled, empty, outside]) == ([], (WIDTH, HEIGHT))
    two = brush_region(mask)
    two["value"]["brushlabels"] = ["cat", "dog"]
    assert [b["label"] for b in boxes_from_result([two])[0]] == ["cat", "dog"]


def _with_value(region: dict, **value) -> dict:
    region = copy.deepcopy(region)
    region["value"].update(value)
    return region


@pytest.mark.parametrize(("region", "message"), [
    (_with_value(brush_region(disc(50, 40, 10)), rle="abc"), r"result\[1\]\.value\.rle: expected a list"),
    (_with_value(brush_region(disc(50, 40, 10)), rle=[1, 2, 3]), r"result\[1\]\.value\.rle: expected a list"),
    (_with_value(brush_region(disc(50, 40, 10)), rle=[0, 0, 0, 0, 300, 1, 1]), r"result\[1\]\.value\.rle: "
     r"expected integers 0 to 255"),
    (_with_value(brush_region(disc(50, 40, 10)), rle=[0.5] * 10), r"result\[1\]\.value\.rle: expected integers"),
    (_with_value(brush_region(disc(50, 40, 10)), format="png"), r"result\[1\]\.value\.format"),
    # an RLE of another image size: the wrong length
    (_with_value(brush_region(disc(50, 40, 10)), rle=mask2rle(np.zeros((HEIGHT, WIDTH - 1), np.uint8))),
     r"result\[1\]\.value\.rle: encodes \d+ values, not the 160x96x4"),
    # cut short: the header is right but the runs stop
    (_with_value(brush_region(disc(50, 40, 10)), rle=mask2rle(disc(50, 40, 10).astype(np.uint8) * 255)[:12]),
     r"result\[1\]\.value\.rle: not a complete Label Studio brush code"),
    (brush_region(disc(50, 40, 10), original_width=None), r"result\[1\]\.original_width/height"),
    (_with_value(polygon_region([[0, 0], [50, 0]])), r"result\[1\]\.value\.points: expected a list of 3"),
    (_with_value(polygon_region("0,0 1,1 2,2")), r"result\[1\]\.value\.points: expected a list"),
    (_with_value(polygon_region([[0, 0], [50, "x"], [0, 100]])), r"result\[1\]\.value\.points: each point"),
    (_with_value(polygon_region([[0, 0], [50, float("nan")], [0, 100]])), r"result\[1\]\.value\.points"),
    (_with_value(polygon_region([[0, 0], [50, 0, 3], [0, 100]])), r"result\[1\]\.value\.points"),
    (_with_value(polygon_region([[i % 100, i % 7] for i in range(10_001)])), r"result\[1\]\.value\.points: "
     r"expected a list of 3 to 10000"),
    (_with_value(polygon_region([[0, 0], [1, 0], [0, 1]]), polygonlabels="cat"),
     r"result\[1\]\.value\.polygonlabels: expected a list of strings"),
], ids=["rle-str", "rle-short", "rle-byte", "rle-float", "format", "rle-length", "rle-cut", "no-size",
        "two-points", "points-str", "point-str", "point-nan", "point-3d", "points-many", "labels"])
def test_malformed_mask_regions_name_the_field(region: dict, message: str) -> None:
    fine = polygon_region([[0, 0], [10, 0], [0, 10]])
    with pytest.raises(ValueError, match=message):
        boxes_from_result([fine, region])


@pytest.mark.parametrize("kind", ["brush", "polygon"])
def test_masks_of_huge_images_are_refused_before_decoding(kind: str, monkeypatch) -> None:
    side = 10_000  # 100 M pixels, within MAX_SIDE per side
    assert side * side > MAX_MASK_PIXELS
    if kind == "brush":
        # The header claims the whole image: decoding it would allocate side * side bytes at least.
        region = brush_region(np.zeros((1, 1), bool), original_width=side, original_height=side)
        count = (side * side * 4).to_bytes(4, "big")
        region["value"]["rle"] = list(count) + region["value"]["rle"][4:]
    else:
        region = polygon_region([[0, 0], [100, 0], [0, 100]], original_width=side, original_height=side)

    import active_learning.labelstudio.regions as regions

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a mask it should have refused")

    import label_studio_sdk.converter.brush as brush

    monkeypatch.setattr(brush, "decode_rle", no_decoding)
    monkeypatch.setattr(coco_mask, "frPyObjects", no_decoding)
    with pytest.raises(ValueError, match=rf"result\[0\]: its image of 10000x10000 pixels is more than the "
                                         rf"{MAX_MASK_PIXELS} pixels"):
        boxes_from_result([region])


def test_a_result_of_too_many_mask_pixels_is_refused(monkeypatch) -> None:
    import active_learning.labelstudio.regions as regions

    monkeypatch.setattr(regions, "MAX_RESULT_MASK_PIXELS", 2 * WIDTH * HEIGHT)
    region = brush_region(disc(50, 40, 10))
    assert len(boxes_from_result([region, region])[0]) == 2
    with pytest.raises(ValueError, match=r"result\[2\]: the result's masks add up to more than"):
        boxes_from_result([region, region, region])


def test_a_result_of_too_many_brush_code_bytes_is_refused(monkeypatch) -> None:
    import active_learning.labelstudio.regions as regions

    region = brush_region(disc(50, 40, 10))
    monkeypatch.setattr(regions, "MAX_RESULT_RLE_BYTES", 2 * len(region["value"]["rle"]))
    assert len(boxes_from_result([region, region])[0]) == 2
    with pytest.raises(ValueError, match=r"result\[2\]: the result's brush codes add up to more than"):
        boxes_from_result([region, region, region])
