"""Corrupt or truncated checkpoints: ``register`` refuses them, and a deployed version whose weights break later
is replaced, in the serving pool, by the version it was trained from (or the starting model), with a logged
error instead of failing requests."""

from __future__ import annotations

import logging
import shutil

import pytest

from active_learning.serving.pool import CheckpointError
from active_learning.training.registry import register
from tests.support.backend import assert_prediction, deploy_copy

PROJECT = 1


def _weights(directory):
    (weights,) = directory.glob("*.safetensors")
    return weights


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bytes(path) -> None:
    """Overwrite bytes in the middle of the tensor data: the file still parses, the weights are not the same."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(255 - b for b in data[middle:middle + 4096])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, lambda path: path.write_bytes(b""), lambda path: path.unlink()])
def test_a_checkpoint_that_does_not_load_is_never_registered(settings, store, small_model_dir, damage, figures):
    checkpoint = settings.data_dir / "checkpoint"
    shutil.copytree(small_model_dir, checkpoint)
    damage(_weights(checkpoint) if any(checkpoint.glob("*.safetensors")) else checkpoint / "x")
    with pytest.raises(CheckpointError, match="does not load"):
        register(store, settings, checkpoint, "groundloop-p1-r1", project_id=PROJECT, parent=None, metrics={},
                 deploy=True)
    assert store.models.versions(PROJECT) == [] and store.models.deployed(PROJECT) is None
    assert not (settings.models_dir / "groundloop-p1-r1").exists()
    figures["checkpoints_refused"] = figures.get("checkpoints_refused", 0) + 1


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes])
def test_a_deployed_version_broken_on_disk_falls_back_and_keeps_serving(
        make_client, settings, store, small_model_dir, ls_request, model_version, caplog, damage, figures):
    """r1 is good, r2 (trained from r1) breaks on disk after deployment: the project is served by r1."""
    deploy_copy(settings, store, small_model_dir, PROJECT, "groundloop-p1-r1", parent=model_version)
    deploy_copy(settings, store, small_model_dir, PROJECT, "groundloop-p1-r2", parent="groundloop-p1-r1")
    damage(_weights(settings.models_dir / "groundloop-p1-r2"))
    client, _ = make_client()
    caplog.set_level(logging.INFO)
    for _ in range(2):  # the second request does not try the broken version again
        answer = client.post("/predict", json=ls_request("predict_retrieve_predictions"))
        assert answer.status_code == 200
        for prediction in answer.json["results"]:
            assert_prediction(prediction, "groundloop-p1-r1")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "groundloop-p1-r2 cannot be loaded" in errors[0].getMessage()
    assert client.post("/setup", json=ls_request("setup")).json["model_version"] == "groundloop-p1-r1"

    # r1 breaks too: the starting model serves
    damage(_weights(settings.models_dir / "groundloop-p1-r1"))
    client, _ = make_client()
    answer = client.post("/predict", json=ls_request("predict_retrieve_predictions"))
    assert answer.status_code == 200 and answer.json["results"][0]["model_version"] == model_version
    figures["deployed_versions_broken_on_disk_survived"] = figures.get("deployed_versions_broken_on_disk_survived",
                                                                       0) + 2
