"""The crop classifier (model/classifier.py): a tiny random DINOv2 built on disk, real crops, real heads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.classifier import (
    CONTEXT,
    CROPS_PER_BATCH,
    ClassifierError,
    CropEncoder,
    LabelHead,
    accuracy,
    crop_windows,
    load_heads,
    save_heads,
    train_head,
)
from model.factory import build_small_crop_encoder
from model.sources import CLASSIFIER, ModelSourceError, check_model_source, copy_model

TEAMS = ("red team", "blue team")
TEAM_COLOURS = ((210, 40, 40), (40, 40, 210))


def team_images(count: int, seed: int) -> list[tuple[Image.Image, np.ndarray, list[int]]]:
    """``count`` noise images of 96-128 px, each with 1-3 squares of one size range, red or blue at random:
    (image, pixel xyxy boxes, team index per box). Only the colour tells the teams apart."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(count):
        side = int(rng.integers(96, 129))
        pixels = rng.integers(0, 256, (side, side, 3))
        boxes, teams = [], []
        for slot in range(int(rng.integers(1, 4))):  # one column of the image each: they never overlap
            square = int(rng.integers(18, 30))
            x0 = slot * side // 3 + int(rng.integers(0, side // 3 - square))
            y0 = int(rng.integers(0, side - square))
            team = int(rng.integers(0, 2))
            pixels[y0:y0 + square, x0:x0 + square] = np.array(TEAM_COLOURS[team]) + rng.integers(-30, 31, 3)
            boxes.append([x0, y0, x0 + square, y0 + square])
            teams.append(team)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        items.append((image, np.array(boxes, dtype=np.float32), teams))
    return items


def encoded(encoder: CropEncoder, items) -> tuple[np.ndarray, list[int]]:
    features = np.concatenate([encoder.encode(image, boxes) for image, boxes, _ in items])
    return features, [team for *_, teams in items for team in teams]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_crop_encoder(tmp_path_factory.mktemp("crop-encoder"), seed=0)


@pytest.fixture(scope="module")
def encoder(encoder_dir: Path) -> CropEncoder:
    return CropEncoder.load(encoder_dir, device="cpu")


@pytest.fixture(scope="module")
def team_features(encoder: CropEncoder):
    """(train features, train targets, validation features, validation targets) of disjoint images."""
    return (*encoded(encoder, team_images(40, seed=1)), *encoded(encoder, team_images(20, seed=2)))


@pytest.fixture(scope="module")
def team_head(team_features) -> LabelHead:
    train_x, train_y, *_ = team_features
    return train_head("square", TEAMS, train_x, train_y)


def noise_image(width: int = 120, height: int = 90, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- CropEncoder -----------------------------------------------------------------------------------------------


def test_encode_gives_unit_rows_of_twice_the_hidden_size(encoder: CropEncoder):
    assert encoder.dim == 2 * encoder.model.config.hidden_size == 64
    assert len(encoder.digest) == 12 and int(encoder.digest, 16) >= 0
    features = encoder.encode(noise_image(), np.array([[10, 10, 50, 40], [60, 20, 110, 85]], dtype=np.float32))
    assert features.shape == (2, encoder.dim) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(features[0], features[1], atol=1e-3)  # different crops, different features


def test_encode_of_no_boxes_is_an_empty_matrix(encoder: CropEncoder):
    for empty in (np.zeros((0, 4)), np.array([]), []):
        features = encoder.encode(noise_image(), empty)
        assert features.shape == (0, encoder.dim) and features.dtype == np.float32


def test_batched_features_equal_one_by_one(encoder: CropEncoder):
    image = noise_image(200, 150, seed=3)
    rng = np.random.default_rng(4)
    corners = rng.uniform(0, 120, (CROPS_PER_BATCH + 5, 2))  # more than one batch
    boxes = np.concatenate([corners, corners + rng.uniform(5, 80, corners.shape)], axis=1)
    batched = encoder.encode(image, boxes)
    alone = np.concatenate([encoder.encode(image, box[None]) for box in boxes])
    np.testing.assert_allclose(batched, alone, atol=2e-5)


def test_crops_take_context_and_are_clipped_to_the_image():
    windows = crop_windows(np.array([[20, 30, 70, 50], [-30, -30, 10, 500]]), (100, 80))
    assert CONTEXT == 0.1
    assert windows[0].tolist() == [15, 28, 75, 52]  # 10 % of 50 px and of 20 px on each side
    assert windows[1].tolist() == [0, 0, 14, 80]


def test_degenerate_and_outside_boxes_still_encode(encoder: CropEncoder):
    image = noise_image(120, 90)
    boxes = np.array([
        [40, 40, 40, 40],  # a point
        [70, 20, 30, 60],  # reversed corners
        [500, 500, 600, 600],  # outside the image
        [-50, -50, -10, -10],  # outside on the other side
        [np.nan, 0, np.inf, 10],  # not finite
    ])
    windows = crop_windows(boxes, image.size)
    assert np.all(windows[:, 2] > windows[:, 0]) and np.all(windows[:, 3] > windows[:, 1])
    assert np.all(windows[:, :2] >= 0) and np.all(windows[:, 2] <= 120) and np.all(windows[:, 3] <= 90)
    features = encoder.encode(image, boxes)
    assert features.shape == (5, encoder.dim) and np.all(np.isfinite(features))
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_a_greyscale_image_encodes_like_its_rgb_copy(encoder: CropEncoder):
    grey = noise_image().convert("L")
    box = np.array([[10, 10, 60, 60]])
    np.testing.assert_allclose(encoder.encode(grey, box), encoder.encode(grey.convert("RGB"), box), atol=1e-6)


# --- heads -----------------------------------------------------------------------------------------------------


def test_a_head_tells_the_colour_teams_apart_on_unseen_images(team_features, team_head: LabelHead):
    _, train_y, val_x, val_y = team_features
    assert len(val_y) >= 30 and 0 < sum(val_y) < len(val_y)  # both teams in the validation crops
    assert team_head.labels == TEAMS and team_head.crops == len(train_y)
    assert team_head.counts == {"red team": train_y.count(0), "blue team": train_y.count(1)}
    assert team_head.weight.shape == (2, 64) and team_head.bias.shape == (2,)
    assert accuracy(team_head, val_x, val_y) >= 0.9


def test_probabilities_predict_and_margin_agree(team_features, team_head: LabelHead):
    val_x = team_features[2]
    probabilities = team_head.probabilities(val_x)
    assert probabilities.shape == (len(val_x), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    best, probability = team_head.predict(val_x)
    np.testing.assert_array_equal(best, probabilities.argmax(axis=1))
    np.testing.assert_allclose(probability, probabilities.max(axis=1))
    np.testing.assert_allclose(team_head.margin(val_x), np.abs(probabilities[:, 0] - probabilities[:, 1]), atol=1e-6)
    assert team_head.probabilities(np.zeros((0, 64))).shape == (0, 2)
    assert team_head.predict(np.zeros((0, 64)))[0].shape == (0,)
    with pytest.raises(ValueError, match="features"):
        team_head.probabilities(np.zeros((3, 10)))


def test_a_label_without_crops_never_wins(team_features):
    train_x, train_y, val_x, _ = team_features
    labels = ("red team", "green team", "blue team")
    head = train_head("square", labels, train_x, [{0: 0, 1: 2}[team] for team in train_y])
    assert head.counts["green team"] == 0
    probabilities = head.probabilities(np.concatenate([val_x, -val_x, np.zeros((1, 64))]))
    assert np.all(probabilities[:, 1] == 0.0)
    assert not np.any(head.predict(val_x)[0] == 1)
    np.testing.assert_array_equal(head.weight[1], 0.0)


def test_a_head_with_one_label_present_always_picks_it(team_features):
    train_x, train_y, val_x, _ = team_features
    blue = [index for index, team in enumerate(train_y) if team == 1]
    head = train_head("square", TEAMS, train_x[blue], [1] * len(blue))
    best, probability = head.predict(np.concatenate([val_x, -val_x]))
    assert np.all(best == 1) and np.all(probability == 1.0)
    assert np.all(head.margin(val_x) == 1.0)

    only = train_head("face", ("Alice",), train_x, [0] * len(train_x))
    assert only.probabilities(val_x).shape == (len(val_x), 1)
    assert np.all(only.predict(val_x)[1] == 1.0) and np.all(only.margin(val_x) == 1.0)


def test_train_head_refuses_bad_input(team_features):
    train_x, train_y, *_ = team_features
    with pytest.raises(ValueError, match="no training crops"):
        train_head("square", TEAMS, np.zeros((0, 64), dtype=np.float32), [])
    with pytest.raises(ValueError, match="targets"):
        train_head("square", TEAMS, train_x, train_y[:-1])
    with pytest.raises(ValueError, match="targets must index"):
        train_head("square", TEAMS, train_x, [2] * len(train_x))
    with pytest.raises(ValueError, match="no crops"):
        accuracy(train_head("square", TEAMS, train_x, train_y), np.zeros((0, 64)), [])


def test_three_labels_train_a_multinomial_head(encoder: CropEncoder):
    """Three teams, the third green: every label present, each row of the head used."""
    rng = np.random.default_rng(5)
    colours = ((210, 40, 40), (40, 40, 210), (40, 190, 40))
    features, targets = [], []
    for index in range(90):
        team = index % 3
        pixels = rng.integers(0, 256, (64, 64, 3))
        pixels[20:44, 20:44] = np.array(colours[team]) + rng.integers(-30, 31, 3)
        features.append(encoder.encode(Image.fromarray(pixels.astype(np.uint8)), np.array([[20, 20, 44, 44]])))
        targets.append(team)
    features = np.concatenate(features)
    head = train_head("square", ("red", "blue", "green"), features[:60], targets[:60])
    assert accuracy(head, features[60:], targets[60:]) >= 0.9
    assert head.counts == {"red": 20, "blue": 20, "green": 20}


# --- saving heads ----------------------------------------------------------------------------------------------


def saved_heads(team_features, directory: Path) -> list[LabelHead]:
    train_x, train_y, val_x, val_y = team_features
    squares = train_head("square", TEAMS, train_x, train_y)
    squares = dataclasses.replace(squares, val_accuracy=accuracy(squares, val_x, val_y), val_crops=len(val_y))
    faces = train_head("human face", ("Alice",), train_x[:5], [0] * 5)
    save_heads([squares, faces], directory, backbone="tiny-dinov2", backbone_digest="0123456789ab")
    return [squares, faces]


def test_heads_round_trip(team_features, tmp_path: Path):
    heads = saved_heads(team_features, tmp_path / "heads")
    assert sorted(path.name for path in (tmp_path / "heads").iterdir()) == ["heads.json", "heads.safetensors"]
    assert [path.name for path in tmp_path.iterdir()] == ["heads"]  # no temporary directory left beside it
    loaded, metadata = load_heads(tmp_path / "heads")
    assert metadata["backbone"] == "tiny-dinov2" and metadata["backbone_digest"] == "0123456789ab"
    assert metadata["format"] == 1 and metadata["dim"] == 64
    val_x = team_features[2]
    for original, copy in zip(heads, loaded, strict=True):
        assert (copy.phrase, copy.labels, copy.crops, copy.counts, copy.val_accuracy, copy.val_crops) == (
            original.phrase, original.labels, original.crops, original.counts, original.val_accuracy,
            original.val_crops)
        np.testing.assert_array_equal(copy.probabilities(val_x), original.probabilities(val_x))
    assert loaded[0].val_accuracy is not None and loaded[1].val_accuracy is None


def test_saving_again_replaces_the_heads(team_features, tmp_path: Path):
    saved_heads(team_features, tmp_path / "heads")
    head = train_head("cat", ("Tom", "Felix"), team_features[0], team_features[1])
    save_heads([head], tmp_path / "heads", backbone="other", backbone_digest="ffffffffffff")
    loaded, metadata = load_heads(tmp_path / "heads")
    assert [h.phrase for h in loaded] == ["cat"] and metadata["backbone"] == "other"
    assert [path.name for path in tmp_path.iterdir()] == ["heads"]


def test_save_heads_refuses_two_heads_for_one_phrase(team_features, tmp_path: Path):
    head = train_head("square", TEAMS, team_features[0], team_features[1])
    with pytest.raises(ValueError, match="one phrase"):
        save_heads([head, head], tmp_path / "heads", backbone="b", backbone_digest="d")
    assert not (tmp_path / "heads").exists()


def one_line_error(directory: Path, match: str) -> str:
    with pytest.raises(ClassifierError, match=match) as error:
        load_heads(directory)
    message = str(error.value)
    assert str(directory) in message and "\n" not in message
    return message


def test_a_truncated_weights_file_is_a_classifier_error(team_features, tmp_path: Path):
    saved_heads(team_features, tmp_path / "heads")
    weights = tmp_path / "heads" / "heads.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    one_line_error(tmp_path / "heads", "heads.safetensors is not readable")


def test_a_wrong_shape_in_heads_json_is_a_classifier_error(team_features, tmp_path: Path):
    saved_heads(team_features, tmp_path / "heads")
    metadata_file = tmp_path / "heads" / "heads.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["heads"][0]["labels"].append("green team")  # three labels for a two-row weight
    metadata_file.write_text(json.dumps(metadata))
    one_line_error(tmp_path / "heads", "head 0 .* 3 labels")


def test_an_unknown_format_version_is_a_classifier_error(team_features, tmp_path: Path):
    saved_heads(team_features, tmp_path / "heads")
    metadata_file = tmp_path / "heads" / "heads.json"
    metadata_file.write_text(metadata_file.read_text().replace('"format": 1', '"format": 99'))
    one_line_error(tmp_path / "heads", "unknown format version 99")


def test_missing_heads_are_a_classifier_error(team_features, tmp_path: Path):
    one_line_error(tmp_path / "nowhere", "no such directory")
    saved_heads(team_features, tmp_path / "heads")
    (tmp_path / "heads" / "heads.json").unlink()
    one_line_error(tmp_path / "heads", "heads.json is missing")


# --- as a model source -----------------------------------------------------------------------------------------


def test_check_model_source_accepts_dinov2_and_rejects_grounding_dino(encoder_dir: Path, small_model_dir: Path):
    check_model_source(encoder_dir, CLASSIFIER)
    with pytest.raises(ModelSourceError, match="it is a 'grounding-dino' model, not a DINOv2 backbone") as error:
        check_model_source(small_model_dir, CLASSIFIER)
    assert "\n" not in str(error.value) and str(small_model_dir) in str(error.value)


def test_copy_model_gives_an_encoder_with_the_same_features(encoder_dir: Path, encoder: CropEncoder,
                                                           tmp_path: Path):
    copied = copy_model(encoder_dir, tmp_path / "copy", CLASSIFIER)
    again = CropEncoder.load(copied, device="cpu")
    assert again.digest == encoder.digest
    assert again.processor.to_dict() == encoder.processor.to_dict()
    image, boxes, _ = team_images(1, seed=7)[0]
    np.testing.assert_array_equal(again.encode(image, boxes), encoder.encode(image, boxes))
