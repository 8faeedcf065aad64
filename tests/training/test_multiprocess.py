"""``groundloop train --processes 2``: one round fine-tuned by two DDP processes on the CPU (gloo), recorded once
by the round's own process."""

from __future__ import annotations

import re
import time

import pytest

from active_learning.store import Store
from active_learning.training.distributed import fit_on_processes, write_manifest
from backend.cli import main
from model.config import DetectionSettings, TrainingConfig
from model.synthetic import SHAPE_CLASSES
from tests.support.training import PROJECT, annotation_webhook, with_settings

EPOCHS = 2


def _train_argv(settings, *extra: str) -> list[str]:
    return ["train", "--project", str(PROJECT), "--processes", "2", "--data-dir", str(settings.data_dir),
            "--model", settings.model, "--device", "cpu", "--image-size", "64", "--batch-size", "2",
            "--label-studio-url", settings.label_studio_url, "--label-studio-api-key",
            settings.label_studio_api_key, "--epochs", str(EPOCHS), "--patience", str(EPOCHS),
            "--log-level", "INFO", *extra]


@pytest.fixture
def small_project(settings, shapes, ls_request) -> Store:
    store = Store.from_settings(settings)
    for index in range(8):  # 6 train (3 batches of 2: one process gets a repeat), 2 validate
        store.ingest(annotation_webhook(ls_request, index, shapes[index]))
    return store


@pytest.mark.slow  # two processes fine-tune the small model for two epochs
def test_a_round_on_two_processes_trains_on_both_and_is_recorded_once(settings, small_project, capfd):
    assert main(_train_argv(settings)) == 0
    out, err = capfd.readouterr()
    logs = out + err
    for rank in (0, 1):
        trained = re.findall(rf"process {rank} of 2: epoch (\d) trained on (\d+) batches", logs)
        assert [epoch for epoch, _ in trained] == ["1", "2"], logs[-3000:]
        assert all(int(batches) == 2 for _, batches in trained)  # 3 batches an epoch, padded to 2 + 2
    assert len(re.findall(r"epoch \d/2: loss .* val mAP", logs)) == 2 * EPOCHS  # fit's log and the CLI's line

    (run,) = small_project.runs.of_project(PROJECT)
    assert run.status in ("succeeded", "rejected"), run.error
    assert [epoch["epoch"] for epoch in run.epochs] == [1, 2]
    assert all("map" in epoch for epoch in run.epochs)
    versions = [v for v in small_project.models.versions(PROJECT) if v.name == run.model_version]
    assert len(small_project.models.versions(PROJECT)) == 1 and len(versions) == 1
    assert not (settings.models_dir / ".staging" / f"run-{run.id}").exists()


@pytest.mark.slow  # two processes start and load the small model
def test_one_failing_process_fails_the_training_with_its_reason_without_a_hang(tmp_path, small_model_dir, shapes):
    # Only the main process reads the validation images: one missing fails it alone, while the other waits for it.
    files = []
    for index, sample in enumerate(shapes[:4]):
        files.append(tmp_path / f"{index}.png")
        sample.image.save(files[-1])
    files[-1].unlink()
    staging = tmp_path / "staging"
    manifest = write_manifest(staging, SHAPE_CLASSES, shapes[:3], files[:3], shapes[3:4], files[3:4],
                              model=str(small_model_dir), device="cpu", config=TrainingConfig(epochs=1, device="cpu"),
                              eval_settings=DetectionSettings(image_size=64), max_image_pixels=10**8,
                              log_level="WARNING")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"process 0: FileNotFoundError: .*3\.png"):
        fit_on_processes(manifest, 2)
    assert time.monotonic() - started < 120


@pytest.mark.slow  # two processes start and train an epoch
def test_a_round_given_up_by_its_own_process_stops_the_training_processes(settings, small_project):
    from active_learning.training.worker import Worker

    def give_up(epoch) -> None:
        raise KeyError("injected after epoch 1")

    small_project.runs.request(PROJECT, "cli")
    settings = with_settings(settings, image_size=64, batch_size=2, epochs=3, patience=3)
    started = time.monotonic()
    outcome = Worker(settings, small_project).run_once(project_id=PROJECT, after_epoch=give_up, processes=2)
    assert outcome.status == "failed" and "injected after epoch 1" in outcome.error
    assert time.monotonic() - started < 120  # epochs 2 and 3 were not waited for
    (run,) = small_project.runs.of_project(PROJECT)
    assert run.status == "failed" and len(run.epochs) == 1
    assert not (settings.models_dir / ".staging" / f"run-{run.id}").exists()
