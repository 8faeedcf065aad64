"""``groundloop train``: a round run in the command's own process, with its progress on stdout."""

from __future__ import annotations

import pytest

from active_learning.store import Store
from backend.cli import main
from tests.support.training import PROJECT, annotation_webhook


@pytest.mark.slow  # a real fine-tuning (one epoch on 8 images)
def test_groundloop_train_runs_a_round_here_and_prints_its_progress(settings, shapes, ls_request, capsys):
    store = Store.from_settings(settings)
    for index in range(8):  # a small project: this tests the command, not the training
        store.ingest(annotation_webhook(ls_request, index, shapes[index]))
    argv = ["train", "--project", str(PROJECT), "--data-dir", str(settings.data_dir), "--model", settings.model,
            "--device", "cpu", "--image-size", "128", "--label-studio-url", settings.label_studio_url,
            "--label-studio-api-key", settings.label_studio_api_key, "--epochs", "1",
            "--promotion-margin", "1.0", "--log-level", "WARNING"]  # no mAP beats the baseline by 1.0
    assert main(argv) == 0  # rejected is a normal end
    out = capsys.readouterr().out
    assert f"training project {PROJECT}" in out and "epoch 1/1: loss" in out
    (run,) = store.runs.of_project(PROJECT)
    assert (run.trigger, run.status, run.train_size + run.val_size) == ("cli", "rejected", 8)
    assert f"run {run.id}: rejected ({run.model_version})" in out
