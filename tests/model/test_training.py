"""Fine-tuning: batches share one prompt (the loss's label-map bug), targets land on the right tokens,
and a short run on synthetic shapes raises validation mAP and keeps the best epoch."""

import random

import numpy as np
import pytest
import supervision as sv
import torch
from transformers.loss.loss_grounding_dino import GroundingDinoImageLoss
from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps

from model import ClassSpec, Detector, build_prompts
from model.config import DetectionSettings
from model.synthetic import SHAPE_CLASSES, make_shapes_dataset
from model.training import TrainingConfig, TrainingExample, augment, encode_batch, evaluate, fit, make_batches

MANY_CLASSES = [ClassSpec(f"object number {i}") for i in range(12)]  # > 32 tokens: several prompts


def _examples(count, classes, seed=0):
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        class_ids = [rng.randrange(len(classes)) for _ in range(3)]
        boxes = [[10 * k, 10 * k, 10 * k + 20, 10 * k + 25] for k in range(3)]
        targets = sv.Detections(xyxy=np.array(boxes, dtype=float), class_id=np.array(class_ids))
        examples.append(TrainingExample(make_shapes_dataset(1, seed=rng.randrange(1000))[0].image, targets))
    return examples


def _token_positions(input_ids, phrase_index):
    """Token positions of the phrase_index-th phrase: runs between [CLS]/'.'/[SEP]."""
    delimiters = {101, 102, 1012, 1029, 0}
    phrases, current = [], []
    for position, token in enumerate(input_ids):
        if token in delimiters:
            if current:
                phrases.append(current)
            current = []
        else:
            current.append(position)
    return phrases[phrase_index]


def test_batches_share_one_prompt_and_every_box_is_learned_once(tokenizer):
    prompts = build_prompts(MANY_CLASSES, tokenizer, max_text_len=32)
    assert len(prompts) > 1
    examples = _examples(10, MANY_CLASSES)
    batches = make_batches(examples, prompts, batch_size=4, rng=random.Random(0))
    seen = []
    for batch in batches:
        for example in batch.examples:
            for class_id in example.targets.class_id:
                assert batch.prompt.phrase_classes[batch.phrase_of_class[int(class_id)]] == class_id
                seen.append(int(class_id))
    assert sorted(seen) == sorted(int(c) for e in examples for c in e.targets.class_id)


def test_loss_targets_hit_the_tokens_of_each_box_class(detector):
    """Feed transformers' own target builder our batch: every box's one-hot must cover its phrase's tokens.

    With different prompts in one batch transformers 5.23 offsets the label maps wrongly; our batches share one
    prompt, so the targets are right. The second half shows the bug is real for mixed prompts.
    """
    classes = [ClassSpec("red square"), ClassSpec("traffic light"), ClassSpec("dog")]
    prompt = build_prompts(classes, detector.processor.tokenizer, detector.model.config.max_text_len)[0]
    examples = _examples(3, classes, seed=3)
    batch = make_batches(examples, [prompt], batch_size=3, rng=random.Random(0))[0]
    inputs = encode_batch(batch, detector.processor, 64, torch.device("cpu"))

    def one_hot(input_ids, labels):
        logits = torch.zeros(len(labels), 5, detector.model.config.max_text_len)
        outputs = {"logits": logits, "label_maps": build_label_maps(logits, input_ids)}
        indices = [(torch.arange(len(t["class_labels"])), torch.arange(len(t["class_labels"]))) for t in labels]
        loss = GroundingDinoImageLoss(matcher=None, focal_alpha=0.25, losses=[])
        return loss._get_target_classes_one_hot(outputs, labels, indices)

    targets = one_hot(inputs["input_ids"], inputs["labels"])
    for image, label in enumerate(inputs["labels"]):
        for box, phrase in enumerate(label["class_labels"].tolist()):
            expected = _token_positions(inputs["input_ids"][image].tolist(), phrase)
            assert torch.nonzero(targets[image, box]).flatten().tolist() == expected

    # Mixed prompts: image 1 reads a one-phrase prompt, image 0 three phrases; its box gets image 0's tokens.
    ids = [list(prompt.input_ids), [101, 3899, 1012, 102] + [0] * (len(prompt.input_ids) - 4)]
    mixed = one_hot(torch.tensor(ids), [{"class_labels": torch.tensor([0])}, {"class_labels": torch.tensor([0])}])
    assert torch.nonzero(mixed[1, 0]).flatten().tolist() != [1]


def test_flip_moves_boxes_with_the_image():
    sample = make_shapes_dataset(1, seed=5)[0]
    while len(sample.targets) == 0:
        sample = make_shapes_dataset(1, seed=random.randrange(100))[0]
    flipped = augment(TrainingExample(sample.image, sample.targets), random.Random(0), hflip_probability=1.0)
    width = sample.image.width
    x1, y1, x2, y2 = sample.targets.xyxy[0]
    assert np.allclose(flipped.targets.xyxy[0], [width - x2, y1, width - x1, y2])
    pixel = np.asarray(sample.image)[int((y1 + y2) / 2), int(x1) + 2]
    assert np.array_equal(np.asarray(flipped.image)[int((y1 + y2) / 2), width - int(x1) - 3], pixel)


@pytest.mark.slow  # a real fine-tuning: 6 epochs on 80 images
def test_fit_raises_validation_map_and_keeps_the_best_epoch(small_model_dir, tmp_path):
    torch.manual_seed(0)
    detector = Detector.load(small_model_dir, device="cpu")
    data = [TrainingExample(s.image, s.targets) for s in make_shapes_dataset(100, seed=1)]
    train, validation = data[:80], data[80:]
    before = evaluate(detector, validation, SHAPE_CLASSES)
    result = fit(detector, train, validation, SHAPE_CLASSES, tmp_path,
                 TrainingConfig(epochs=6, batch_size=8, learning_rate=1e-3, freeze_backbone=False, patience=6))
    best = result.epochs[result.best_epoch - 1]
    assert best.metrics.map == max(e.metrics.map for e in result.epochs)
    assert best.metrics.map > before.map + 0.02
    reloaded = Detector.load(result.best_dir, device="cpu")
    assert evaluate(reloaded, validation, SHAPE_CLASSES).map == best.metrics.map
    assert (tmp_path / "last").is_dir() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_the_learning_rate_warms_up_then_follows_its_schedule(small_model_dir, tmp_path, schedule):
    detector = Detector.load(small_model_dir, device="cpu")
    data = [TrainingExample(s.image, s.targets) for s in make_shapes_dataset(6, seed=3)]
    # 4 images in batches of 2: 2 steps per epoch, 8 planned; a quarter (2 steps) of warm-up
    config = TrainingConfig(epochs=4, batch_size=2, learning_rate=1e-3, lr_schedule=schedule, warmup_fraction=0.25,
                            patience=4)
    result = fit(detector, data[:4], data[4:], SHAPE_CLASSES, tmp_path, config,
                 DetectionSettings(box_threshold=0.01, text_threshold=0.0, image_size=64))
    rates = [e.learning_rate for e in result.epochs]
    assert rates[0] == pytest.approx(1e-3)  # warm-up ends with the first epoch
    if schedule == "constant":
        assert rates == pytest.approx([1e-3] * 4)
    else:
        assert rates[0] > rates[1] > rates[2] > rates[3] and rates[3] == pytest.approx(0.0, abs=1e-12)
