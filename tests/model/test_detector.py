"""The Detector end to end on the small offline model (random detection head, real tokenizer)."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from model import ClassSpec, DetectionSettings, Detector, build_prompts
from model.detector import weights_digest
from model.devices import cpu_has_bf16

CLASSES = [ClassSpec("Traffic Light", aliases=("stop light",)), ClassSpec("light"), ClassSpec("car")]
# The random head is very sure of itself; a low threshold keeps many boxes, to compare.
LOW = DetectionSettings(box_threshold=0.05, text_threshold=0.0)


def noise_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


IMAGES = [noise_image(150, 100, 0), noise_image(90, 120, 1), noise_image(150, 100, 2), noise_image(64, 64, 3, "L")]


def assert_same(a, b):
    assert a.class_id.tolist() == b.class_id.tolist()
    assert a.data["class_name"].tolist() == b.data["class_name"].tolist()
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4)
    assert a.metadata["uncertainty"] == pytest.approx(b.metadata["uncertainty"], abs=1e-4)


def test_detections_are_well_formed(detector):
    results = detector.detect(IMAGES, CLASSES, LOW)
    assert len(results) == len(IMAGES)
    assert sum(len(r) for r in results) > 0
    for image, detections in zip(IMAGES, results):
        width, height = image.size
        assert detections.xyxy.dtype == np.float32
        assert (detections.xyxy >= 0).all()
        assert (detections.xyxy[:, [0, 2]] <= width).all() and (detections.xyxy[:, [1, 3]] <= height).all()
        assert (detections.xyxy[:, 2] >= detections.xyxy[:, 0]).all()
        assert (detections.confidence > LOW.box_threshold).all()
        assert list(detections.confidence) == sorted(detections.confidence, reverse=True)
        names = [CLASSES[i].name for i in detections.class_id]
        assert detections.data["class_name"].tolist() == names
        assert 0.0 <= detections.metadata["uncertainty"] <= 1.0


def test_a_batch_equals_the_same_images_one_by_one(detector):
    batched = detector.detect(IMAGES, CLASSES, LOW)
    for image, from_batch in zip(IMAGES, batched):
        (alone,) = detector.detect([image], CLASSES, LOW)
        assert_same(from_batch, alone)


def test_cpu_precision_sets_the_dtype_of_the_forward_pass(detector):
    seen: set = set()
    first_linear = next(m for m in detector.model.modules() if isinstance(m, torch.nn.Linear))
    hook = first_linear.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    try:
        for precision, expected in [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                    ("auto", torch.bfloat16 if cpu_has_bf16() else torch.float32)]:
            seen.clear()
            (found,) = detector.detect(IMAGES[:1], CLASSES, dataclasses.replace(LOW, cpu_precision=precision))
            assert seen == {expected}, precision
            assert found.xyxy.dtype == np.float32 and len(found) > 0
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="cpu_precision 'fp16'"):
        DetectionSettings(cpu_precision="fp16")


def test_no_classes_or_no_images(detector):
    (empty,) = detector.detect(IMAGES[:1], [], LOW)
    assert len(empty) == 0 and empty.metadata["uncertainty"] == 1.0
    assert empty.data["class_name"].shape == (0,)
    (nameless,) = detector.detect(IMAGES[:1], [ClassSpec("...")], LOW)
    assert len(nameless) == 0 and nameless.metadata["uncertainty"] == 1.0
    assert detector.detect([], CLASSES, LOW) == []


def test_classes_split_over_several_prompts_are_all_detected(detector):
    many = [ClassSpec(f"object number {i}") for i in range(12)]
    prompts = build_prompts(many, detector.processor.tokenizer, detector.model.config.max_text_len)
    assert len(prompts) >= 2
    keep_everything = DetectionSettings(box_threshold=0.0, text_threshold=0.0, nms_iou=1.0, max_detections=10_000)
    (detections,) = detector.detect(IMAGES[:1], many, keep_everything)
    # every query of every prompt survives when nothing filters: the prompts' results were concatenated
    assert len(detections) == len(prompts) * detector.model.config.num_queries
    first_prompt = set(prompts[0].phrase_classes)
    assert set(detections.class_id) - first_prompt, "no class of a later prompt was detected"


def test_max_detections_caps_each_image(detector):
    settings = DetectionSettings(box_threshold=0.0, text_threshold=0.0, max_detections=3)
    results = detector.detect(IMAGES, CLASSES, settings)
    assert [len(r) for r in results] == [3] * len(IMAGES)


def test_image_size_sets_the_shortest_edge(detector):
    ((_, pixels),) = detector._pixel_batches([IMAGES[0]], image_size=64)
    assert pixels.shape[-2:] == (64, 96)  # 150x100 -> shortest edge 64, aspect kept
    default = detector.detect(IMAGES[:1], CLASSES, LOW)[0]
    smaller_settings = DetectionSettings(box_threshold=0.05, text_threshold=0.0, image_size=64)
    smaller = detector.detect(IMAGES[:1], CLASSES, smaller_settings)[0]
    assert not np.allclose(default.confidence[:5], smaller.confidence[:5])


def test_concurrent_calls_give_the_sequential_results(detector):
    expected = [detector.detect([image], CLASSES, LOW)[0] for image in IMAGES]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda image: detector.detect([image], CLASSES, LOW)[0], IMAGES))
    for a, b in zip(got, expected):
        assert_same(a, b)


def test_save_and_load_round_trip(detector, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    detector.model.save_pretrained(tmp_path)
    detector.processor.save_pretrained(tmp_path)
    reloaded = Detector.load(tmp_path, device="cpu")
    assert reloaded.version_digest == detector.version_digest
    assert len(detector.version_digest) == 12 and int(detector.version_digest, 16) >= 0
    for a, b in zip(detector.detect(IMAGES, CLASSES, LOW), reloaded.detect(IMAGES, CLASSES, LOW)):
        assert_same(a, b)

    with torch.no_grad():
        reloaded.model.model.query_position_embeddings.weight[0, 0] += 1e-3
    assert weights_digest(reloaded.model) != detector.version_digest
