"""The Segmenter end to end on tiny random SAM-family models saved and loaded like hub checkpoints."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import model.segmenter as segmenter_module
from model import Segmenter, build_small_segmenter
from model.detector import weights_digest

WIDE = (150, 90)  # width, height: non-square both ways, neither a multiple of the 128 px input
TALL = (90, 150)
BOXES = np.array([[10, 10, 60, 50], [0, 0, 150, 90], [100, 20, 140, 80], [30, 40, 31, 41], [5, 60, 145, 88]],
                 dtype=np.float32)


def noise_image(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


class Calls:
    """Counts the forwards of a module (here: the vision encoder, i.e. image embeddings computed)."""

    def __init__(self, module):
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.count += 1

    def remove(self):
        self._handle.remove()


@pytest.fixture
def encoder_calls(segmenter):
    calls = Calls(segmenter.model.vision_encoder)
    yield calls
    calls.remove()


def test_loads_from_a_directory_like_a_hub_checkpoint(segmenter, small_segmenter_dir):
    assert type(segmenter.model).__name__ == "SamModel"
    assert segmenter.source == str(small_segmenter_dir)
    assert segmenter.device.type == "cpu"
    assert segmenter.version_digest == weights_digest(segmenter.model)
    assert len(segmenter.version_digest) == 12


def test_version_digest_follows_the_weights(segmenter, tmp_path):
    other = Segmenter.load(build_small_segmenter(tmp_path, seed=1), device="cpu")
    assert other.version_digest != segmenter.version_digest


@pytest.mark.parametrize("size", [WIDE, TALL])
def test_segment_boxes_gives_one_full_size_bool_mask_per_box(segmenter, size):
    image = noise_image(size)
    masks = segmenter.segment_boxes(image, BOXES)
    assert masks.dtype == np.bool_
    assert masks.shape == (len(BOXES), image.height, image.width)
    assert masks.any()  # the random model does answer something somewhere


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_non_rgb_images_are_segmented_as_their_rgb_conversion(segmenter, mode):
    image = noise_image(WIDE, seed=3, mode=mode)
    masks = segmenter.segment_boxes(image, BOXES[:2])
    assert masks.shape == (2, image.height, image.width)
    np.testing.assert_array_equal(masks, segmenter.segment_boxes(image.convert("RGB"), BOXES[:2]))


def test_no_boxes_gives_an_empty_array_without_running_the_model(segmenter, encoder_calls):
    masks = segmenter.segment_boxes(noise_image(WIDE), np.zeros((0, 4)))
    assert masks.shape == (0, WIDE[1], WIDE[0]) and masks.dtype == np.bool_
    assert encoder_calls.count == 0


def test_the_image_is_embedded_once_for_all_its_boxes(segmenter, encoder_calls, monkeypatch):
    image = noise_image(WIDE)
    whole = segmenter.segment_boxes(image, BOXES)
    assert encoder_calls.count == 1
    # Decoder chunks of 2 boxes: still one embedding, and the same masks.
    monkeypatch.setattr(segmenter_module, "DECODER_CHUNK", 2)
    chunked = segmenter.segment_boxes(image, BOXES)
    assert encoder_calls.count == 2
    np.testing.assert_array_equal(chunked, whole)


def test_masks_are_upsampled_a_few_at_a_time(segmenter, monkeypatch):
    """A mask budget of one full-size image (plus SAM's padded size) upsamples one mask per call."""
    image = noise_image(WIDE)
    whole = segmenter.segment_boxes(image, BOXES)
    pad = segmenter.processor.image_processor.pad_size
    monkeypatch.setattr(segmenter_module, "UPSAMPLE_PIXELS", WIDE[0] * WIDE[1] + pad["height"] * pad["width"])
    chunk_sizes = []
    post_process = segmenter.processor.post_process_masks

    def recording(masks, **kwargs):
        chunk_sizes.append(len(masks[0]))
        return post_process(masks, **kwargs)

    monkeypatch.setattr(segmenter.processor, "post_process_masks", recording)
    np.testing.assert_array_equal(segmenter.segment_boxes(image, BOXES), whole)
    assert chunk_sizes == [1] * len(BOXES)


def test_a_large_image_is_reduced_before_the_processor_and_masked_at_full_size(segmenter, monkeypatch):
    """The processor sees the image at the model's input side (not a float copy of every source pixel); the masks
    come back at the source's size and agree with those of the processor's own resize."""
    image = noise_image((1200, 720), seed=3)
    boxes = BOXES * 8
    reference = _processor_resized_masks(segmenter, image, boxes)
    seen = []
    processor_call = type(segmenter.processor).__call__

    def recording(self, images=None, **kwargs):
        seen.append(images.size)
        return processor_call(self, images=images, **kwargs)

    monkeypatch.setattr(type(segmenter.processor), "__call__", recording)
    masks = segmenter.segment_boxes(image, boxes)
    assert seen == [(128, 77)]  # longest side 128, the tiny SAM's input
    assert masks.shape == (len(boxes), 720, 1200)
    overlap = (masks & reference).sum(axis=(1, 2)) / np.maximum((masks | reference).sum(axis=(1, 2)), 1)
    assert (overlap > 0.9).all(), overlap
    click = segmenter.segment_points(image, np.array([[600.0, 360.0]]), np.array([1]))
    assert click.shape == (720, 1200) and seen[-1] == (128, 77)


def _processor_resized_masks(segmenter, image, boxes):
    """The masks when the processor resizes the full image itself (the path ``_reduce`` shortcuts)."""
    inputs = segmenter.processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    prompts = {"input_boxes": inputs.pop("input_boxes")}
    low_res = segmenter._decode(segmenter._embed(inputs["pixel_values"]), **prompts)
    return segmenter._full_size(low_res, inputs, image.size)


def test_each_mask_depends_only_on_its_own_box(segmenter):
    """Same input, same masks; permuting the boxes permutes the masks; different boxes, different masks."""
    image = noise_image(WIDE)
    masks = segmenter.segment_boxes(image, BOXES)
    np.testing.assert_array_equal(segmenter.segment_boxes(image, BOXES), masks)
    order = [3, 0, 4, 2, 1]
    np.testing.assert_array_equal(segmenter.segment_boxes(image, BOXES[order]), masks[order])
    np.testing.assert_array_equal(segmenter.segment_boxes(image, BOXES[1:2])[0], masks[1])
    assert not np.array_equal(masks[0], masks[1])


def test_concurrent_calls_give_the_same_masks(segmenter):
    images = [noise_image(WIDE, seed) for seed in range(4)]
    expected = [segmenter.segment_boxes(image, BOXES) for image in images]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda image: segmenter.segment_boxes(image, BOXES), images))
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_segment_points_with_clicks_a_box_or_both(segmenter, encoder_calls):
    image = noise_image(TALL)
    clicks = np.array([[30, 40], [60, 100]], dtype=np.float32)
    positive = segmenter.segment_points(image, clicks, np.array([1, 1]))
    mixed = segmenter.segment_points(image, clicks, np.array([1, 0]))
    boxed = segmenter.segment_points(image, clicks[:1], np.array([1]), box=BOXES[0])
    box_only = segmenter.segment_points(image, np.zeros((0, 2)), np.zeros(0), box=BOXES[0])
    for mask in (positive, mixed, boxed, box_only):
        assert mask.shape == (image.height, image.width) and mask.dtype == np.bool_
    assert encoder_calls.count == 4  # one embedding per call
    assert not np.array_equal(positive, mixed)  # the labels reach the model
    assert not np.array_equal(boxed, box_only)  # so does the click beside the box
    # A box alone is the same prompt segment_boxes sends.
    np.testing.assert_array_equal(box_only, segmenter.segment_boxes(image, BOXES[:1])[0])
    np.testing.assert_array_equal(segmenter.segment_points(image, [], [], box=BOXES[0]), box_only)


def test_segment_points_needs_a_prompt(segmenter, encoder_calls):
    image = noise_image(WIDE)
    with pytest.raises(ValueError, match="at least one point or a box"):
        segmenter.segment_points(image, np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match="at least one point or a box"):
        segmenter.segment_points(image, [], [], box=np.zeros(0))
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        segmenter.segment_points(image, np.array([[1, 2], [3, 4]]), np.array([1]))
    assert encoder_calls.count == 0


def _needs(*modules: str) -> list:
    """Skip marks for the kinds whose processor or backbone needs a package this venv may lack."""
    missing = []
    for name in modules:
        try:
            __import__(name)
        except Exception:  # a torchvision built for another torch fails with RuntimeError, not ImportError
            missing.append(name)
    return [pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")]


@pytest.mark.parametrize("kind, model_class", [
    pytest.param("sam_hq", "SamHQModel"),
    pytest.param("sam2", "Sam2Model", marks=_needs("torchvision")),
    pytest.param("edgetam", "EdgeTamModel", marks=_needs("torchvision", "timm")),
])
def test_other_sam_kinds_load_and_answer(tmp_path, kind, model_class):
    segmenter = Segmenter.load(build_small_segmenter(tmp_path, kind=kind), device="cpu")
    assert type(segmenter.model).__name__ == model_class
    calls = Calls(segmenter.model.vision_encoder)
    image = noise_image(WIDE)
    masks = segmenter.segment_boxes(image, BOXES)
    assert masks.shape == (len(BOXES), image.height, image.width) and masks.dtype == np.bool_
    assert calls.count == 1
    np.testing.assert_array_equal(segmenter.segment_boxes(image, BOXES[1:2])[0], masks[1])
    mask = segmenter.segment_points(image, np.array([[30, 40]]), np.array([1]), box=BOXES[0])
    assert mask.shape == (image.height, image.width) and mask.dtype == np.bool_
    assert segmenter.segment_boxes(image, np.zeros((0, 4))).shape == (0, image.height, image.width)


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown segmenter kind"):
        build_small_segmenter(tmp_path, kind="sam3")
