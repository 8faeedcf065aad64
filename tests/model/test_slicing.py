"""Sliced inference: tiles of the original image seen besides the whole image, merged by the usual selection.

The small model's random head cannot find objects, so nothing here asserts recall (bench/slicing_bench.py measures
it with a trained model); what holds for any weights is asserted: with nothing filtered, the sliced result is the
whole image's candidates plus every tile's, each tile's at its place in the image.
"""

import dataclasses
import json

import numpy as np
import pytest

from active_learning.labelstudio.config import LabelConfigError, parse_label_config
from active_learning.serving.jobs import _detection_key, make_job
from active_learning.settings import Settings
from model import ClassSpec, DetectionSettings, build_prompts
from model.slicing import tile_windows
from tests.model.test_detector import assert_same, noise_image

CLASSES = [ClassSpec("car"), ClassSpec("person")]
KEEP_ALL = DetectionSettings(box_threshold=0.0, text_threshold=0.0, nms_iou=1.0, max_detections=100_000,
                             cpu_precision="fp32")  # bf16 rounds batches of other sizes differently
SLICED = dataclasses.replace(KEEP_ALL, slice_size=128, slice_overlap=0.25)
IMAGE = noise_image(300, 200, 7)


def test_tiles_cover_the_image_with_one_shape():
    windows = tile_windows(1024, 1024, 256, 0.2)
    assert len(windows) == 25
    assert {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in windows} == {(256, 256)}
    assert max(w[2] for w in windows) == 1024 and max(w[3] for w in windows) == 1024
    starts = sorted({w[0] for w in windows})
    assert starts == [0, 205, 410, 615, 768]  # stride 256 - 51, the last tile moved back to end at the border
    # a side no longer than a tile gets tiles as long as that side; an image within one tile gets none
    assert {(w[2] - w[0], w[3] - w[1]) for w in tile_windows(300, 100, 128, 0.2)} == {(128, 100)}
    assert tile_windows(128, 100, 128, 0.2) == [] and tile_windows(1024, 1024, 0, 0.2) == []


def test_sliced_result_is_the_whole_image_plus_each_tile_at_its_place(detector):
    windows = tile_windows(*IMAGE.size, SLICED.slice_size, SLICED.slice_overlap)
    assert len(windows) == 6
    (sliced,) = detector.detect([IMAGE], CLASSES, SLICED)
    (whole,) = detector.detect([IMAGE], CLASSES, KEEP_ALL)
    prompts = build_prompts(CLASSES, detector.processor.tokenizer, detector.model.config.max_text_len)
    queries = len(prompts) * detector.model.config.num_queries
    assert len(whole) == queries and len(sliced) == queries * (1 + len(windows))

    def contains(found, expected):
        for box, score, class_id in zip(expected.xyxy, expected.confidence, expected.class_id):
            close = (np.abs(found.xyxy - box).max(axis=1) < 1e-2) & (np.abs(found.confidence - score) < 1e-3)
            assert (close & (found.class_id == class_id)).any(), f"{box} ({score:.3f}) is missing"

    contains(sliced, whole)
    for x0, y0, x1, y1 in windows:
        (tile,) = detector.detect([IMAGE.crop((x0, y0, x1, y1))], CLASSES, KEEP_ALL)
        tile.xyxy = tile.xyxy + np.array([x0, y0, x0, y0], dtype=np.float32)
        contains(sliced, tile)  # found only in that tile, in image coordinates
    # the uncertainty is taken over every candidate, the tiles' too
    assert 0.0 <= sliced.metadata["uncertainty"] <= whole.metadata["uncertainty"]


def test_sliced_boxes_are_selected_as_usual(detector):
    settings = DetectionSettings(box_threshold=0.0, text_threshold=0.0, max_detections=7, slice_size=128)
    (detections,) = detector.detect([IMAGE], CLASSES, settings)
    assert len(detections) == 7
    width, height = IMAGE.size
    assert (detections.xyxy >= 0).all()
    assert (detections.xyxy[:, [0, 2]] <= width).all() and (detections.xyxy[:, [1, 3]] <= height).all()
    assert list(detections.confidence) == sorted(detections.confidence, reverse=True)
    assert detections.data["class_name"].tolist() == [CLASSES[i].name for i in detections.class_id]


def test_off_or_an_image_within_one_tile_is_not_sliced(detector):
    small = noise_image(120, 100, 8)
    (off,) = detector.detect([small], CLASSES, KEEP_ALL)
    (on,) = detector.detect([small], CLASSES, dataclasses.replace(KEEP_ALL, slice_size=128))
    assert_same(off, on)
    (default,) = detector.detect([IMAGE], CLASSES, DetectionSettings(box_threshold=0.05, text_threshold=0.0))
    (zero,) = detector.detect([IMAGE], CLASSES, DetectionSettings(box_threshold=0.05, text_threshold=0.0,
                                                                   slice_size=0, slice_overlap=0.5))
    assert_same(default, zero)


@pytest.mark.parametrize("size, overlap", [(-1, 0.2), (10, 0.2), (128, 1.0), (128, -0.1)])
def test_bad_detection_settings_are_refused(size, overlap):
    with pytest.raises(ValueError):
        DetectionSettings(slice_size=size, slice_overlap=overlap)


def _config(*attrs: str) -> str:
    controls = "".join(f'<RectangleLabels name="c{i}" toName="image" {a}><Label value="car{i}"/></RectangleLabels>'
                       for i, a in enumerate(attrs))
    return f'<View><Image name="image" value="$image"/>{controls}</View>'


def test_the_control_attribute_is_read_and_validated():
    assert parse_label_config(_config('slice_size="640"')).controls[0].slice_size == 640
    assert parse_label_config(_config("")).controls[0].slice_size is None
    assert parse_label_config(_config('slice_size="0"')).controls[0].slice_size == 0
    for bad, message in [("abc", "not a whole number"), ("64.5", "not a whole number"), ("-1", "at least"),
                         ("10", "at least")]:
        with pytest.raises(LabelConfigError, match=f'slice_size="{bad}" on "c0".*{message}'):
            parse_label_config(_config(f'slice_size="{bad}"'))


def test_the_job_slices_as_the_config_says_and_its_key_changes():
    settings = Settings()
    plain = make_job(settings, parse_label_config(_config("")))
    sliced = make_job(settings, parse_label_config(_config('slice_size="640"')))
    assert plain.detection.slice_size == 0 and sliced.detection.slice_size == 640
    assert sliced.params_key != plain.params_key
    # the smallest non-zero size of the controls wins
    assert make_job(settings, parse_label_config(_config('slice_size="640"', 'slice_size="320"'))
                    ).detection.slice_size == 320
    assert make_job(settings, parse_label_config(_config('slice_size="0"', 'slice_size="512"', ""))
                    ).detection.slice_size == 512
    # the settings' size serves configs without the attribute; the attribute wins over it, 0 included
    by_settings = make_job(Settings(slice_size=640), parse_label_config(_config("")))
    assert by_settings.detection.slice_size == 640 and by_settings.params_key == sliced.params_key
    assert make_job(Settings(slice_size=640), parse_label_config(_config('slice_size="0"'))
                    ).params_key == plain.params_key
    overlap = make_job(Settings(slice_size=640, slice_overlap=0.5), parse_label_config(_config("")))
    assert overlap.params_key != sliced.params_key
    # off, the overlap changes nothing, and the key is the one jobs had before slicing existed
    assert make_job(Settings(slice_overlap=0.5), parse_label_config(_config(""))).params_key == plain.params_key
    assert "slice_size" not in json.dumps(_detection_key(plain.detection))
