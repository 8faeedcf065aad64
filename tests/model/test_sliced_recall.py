"""Sliced inference finds small objects that the whole image hides: the small model, taught the synthetic shapes
at 128 px, looks at a 512 px image of 24-40 px shapes at shortest edge 128, with slicing off (the shapes shrink to
6-10 px) and on (128 px tiles, where they are as large as in training)."""

import dataclasses
import random

import pytest
import supervision as sv
import torch

from model import Detector, TrainingConfig, build_small_model
from model.config import EVAL_SETTINGS
from model.synthetic import SHAPE_CLASSES, make_shapes_dataset, make_small_shapes_image
from model.training import TrainingExample, fit

UNSLICED = dataclasses.replace(EVAL_SETTINGS, image_size=128)
SLICED = dataclasses.replace(UNSLICED, slice_size=128, slice_overlap=0.2)


def found(truth: sv.Detections, predicted: sv.Detections) -> int:
    """True boxes that a predicted box of their class overlaps by IoU >= 0.5 (any score)."""
    if len(predicted) == 0:
        return 0
    iou = sv.box_iou_batch(truth.xyxy, predicted.xyxy)
    return int(((iou >= 0.5) & (truth.class_id[:, None] == predicted.class_id[None, :])).any(axis=1).sum())


@pytest.mark.slow  # a real fine-tuning: 8 epochs on 96 images, about a minute
def test_sliced_inference_finds_small_objects_the_whole_image_misses(tmp_path):
    torch.manual_seed(0)
    detector = Detector.load(build_small_model(tmp_path / "small", seed=0), device="cpu")
    train = [TrainingExample(s.image, s.targets) for s in make_shapes_dataset(96, seed=1)]
    validation = [TrainingExample(s.image, s.targets) for s in make_shapes_dataset(8, seed=2)]
    config = TrainingConfig(epochs=8, batch_size=2, learning_rate=1e-3, patience=8, freeze_backbone=False,
                            device="cpu")
    fit(detector, train, validation, SHAPE_CLASSES, tmp_path / "fit", config, eval_settings=UNSLICED)
    detector = Detector.load(tmp_path / "fit" / "best", device="cpu")

    rng = random.Random(3)
    images = [make_small_shapes_image(rng, 512, count=6, min_side=24, max_side=40) for _ in range(3)]
    truth = sum(len(sample.targets) for sample in images)
    unsliced = sum(found(s.targets, detector.detect([s.image], SHAPE_CLASSES, UNSLICED)[0]) for s in images)
    sliced = sum(found(s.targets, detector.detect([s.image], SHAPE_CLASSES, SLICED)[0]) for s in images)
    assert unsliced <= truth // 6, (unsliced, sliced, truth)
    assert sliced >= truth // 3, (unsliced, sliced, truth)
