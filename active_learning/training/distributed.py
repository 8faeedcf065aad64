"""One round's fine-tuning on N processes (DDP through accelerate): the manifest, the launch, and what each
training process runs.

The round's own process (``run_round``: the one that claimed the run, holds its lease and alone opens the store)
does not train on N processes itself. It writes the training data into the run's staging directory as
``manifest.json`` (the image files of the image cache, the boxes and classes, the model, the training settings)
and starts N processes with accelerate's launcher, as a user could by hand::

    accelerate launch --multi_gpu --num_processes N -m active_learning.training.distributed STAGING/manifest.json

(``--multi_gpu`` only picks torchrun's launcher: on a machine without GPU the processes train on the CPU with
gloo, on a GPU box each gets a GPU and NCCL.) Every process runs the same ``fit`` on its share of the batches;
the main one (rank 0) evaluates each epoch, writes the checkpoints into the staging directory and appends each
epoch to ``epochs.jsonl``, which the round's process records in the store as it appears. A process that fails
writes why into ``error-rank<R>.txt``; the launcher then stops the others and exits non-zero, and the round fails
with that reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import supervision as sv

from model.config import DetectionSettings, TrainingConfig
from model.evaluation import DetectionMetrics
from model.prompts import ClassSpec
from model.training import EpochResult, FitResult, TrainingExample

log = logging.getLogger(__name__)

MANIFEST, EPOCHS, RESULT = "manifest.json", "epochs.jsonl", "fit.json"
MAX_ERROR_CHARS = 500
"""Of each process's error, what the run's error keeps (the whole traceback is in the processes' log)."""
STOP_SECONDS = 30
"""Seconds the launcher gets to stop its processes when the round is given up, before they are killed."""


# --- the round's process -----------------------------------------------------------------------------


def write_manifest(staging: Path, classes: Sequence[ClassSpec], train: Sequence[TrainingExample],
                   train_files: Sequence[Path], validation: Sequence[TrainingExample],
                   validation_files: Sequence[Path], *, model: str, device: str, config: TrainingConfig,
                   eval_settings: DetectionSettings, max_image_pixels: int, log_level: str) -> Path:
    """Everything the training processes need, in ``staging/manifest.json``: no process but this one opens the store."""
    def examples(items: Sequence[TrainingExample], files: Sequence[Path]) -> list[dict]:
        return [{"image": str(file), "xyxy": np.asarray(e.targets.xyxy, dtype=float).reshape(-1, 4).tolist(),
                 "class_id": np.asarray(e.targets.class_id, dtype=int).reshape(-1).tolist()}
                for e, file in zip(items, files, strict=True)]

    staging.mkdir(parents=True, exist_ok=True)
    manifest = {"model": model, "device": device, "config": dataclasses.asdict(config),
                "eval_settings": dataclasses.asdict(eval_settings), "max_image_pixels": max_image_pixels,
                "log_level": log_level, "classes": [dataclasses.asdict(c) for c in classes],
                "train": examples(train, train_files), "validation": examples(validation, validation_files)}
    path = staging / MANIFEST
    path.write_text(json.dumps(manifest))
    return path


def launch_command(manifest: Path, processes: int) -> list[str]:
    """``accelerate launch`` (its module, with this interpreter) of ``processes`` training processes."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", "0",  # a free port: rounds of several projects may train on one machine
            "-m", __name__, str(manifest)]


def fit_on_processes(manifest: Path, processes: int,
                     on_epoch_end: Callable[[EpochResult], None] | None = None,
                     poll_seconds: float = 1.0) -> FitResult:
    """Launch the processes and wait for them, handing each epoch the main one reports to ``on_epoch_end``; the
    main process's ``FitResult``. Raises ``RuntimeError`` with the failing process's error when any fails."""
    staging = manifest.parent
    for stale in (staging / EPOCHS, staging / RESULT, *staging.glob("error-rank*.txt")):
        stale.unlink(missing_ok=True)
    log.info("training on %d processes: %s", processes, " ".join(launch_command(manifest, processes)))
    launcher = subprocess.Popen(launch_command(manifest, processes), start_new_session=True)
    reported = 0
    try:
        while True:
            finished = launcher.poll() is not None
            for epoch in _epochs(staging)[reported:]:
                reported += 1
                if on_epoch_end is not None:
                    on_epoch_end(epoch)
            if finished:
                break
            time.sleep(poll_seconds)
    finally:
        _stop(launcher)
    if launcher.returncode != 0 or not (staging / RESULT).exists():
        errors = [p.read_text().strip()[:MAX_ERROR_CHARS] for p in sorted(staging.glob("error-rank*.txt"))]
        raise RuntimeError(f"training on {processes} processes failed (launcher exit code {launcher.returncode})"
                           + (f": {'; '.join(errors)}" if errors else ""))
    saved = json.loads((staging / RESULT).read_text())
    return FitResult(epochs=_epochs(staging), best_epoch=saved["best_epoch"],
                     best_dir=Path(saved["best_dir"]) if saved["best_dir"] else None,
                     last_dir=Path(saved["last_dir"]) if saved["last_dir"] else None)


def _epochs(staging: Path) -> list[EpochResult]:
    """The epochs ``epochs.jsonl`` holds; a line still being written is not one yet."""
    try:
        lines = (staging / EPOCHS).read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return []
    epochs = []
    for line in lines:
        if not line.endswith("\n"):
            break
        row = json.loads(line)
        epochs.append(EpochResult(row["epoch"], row["train_loss"], DetectionMetrics(**row["metrics"]),
                                  row["seconds"], row["learning_rate"]))
    return epochs


def _stop(launcher: subprocess.Popen) -> None:
    """End the launcher and its processes (its own session) if the round gave up on them while they ran."""
    if launcher.poll() is not None:
        return
    os.killpg(launcher.pid, signal.SIGTERM)
    try:
        launcher.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()


# --- each training process ---------------------------------------------------------------------------


def _load_examples(rows: list[dict], max_image_pixels: int) -> list[TrainingExample]:
    from active_learning.images.fetcher import decode  # as the round's process decoded the cached files

    return [TrainingExample(decode(row["image"], Path(row["image"]).read_bytes(), max_image_pixels).image,
                            sv.Detections(xyxy=np.asarray(row["xyxy"], dtype=float).reshape(-1, 4),
                                          class_id=np.asarray(row["class_id"], dtype=int)))
            for row in rows]


def train_process(manifest_path: Path) -> None:
    """One of the N processes: ``fit`` on the manifest's data; the main one also reports epochs and the result."""
    from model.detector import Detector
    from model.training import fit

    manifest = json.loads(manifest_path.read_text())
    staging = manifest_path.parent
    rank = int(os.environ.get("RANK", "0"))  # set by the launcher; the Accelerator fit creates agrees
    logging.basicConfig(level=manifest["log_level"].upper(),
                        format=f"%(asctime)s %(levelname)s [process {rank}] %(name)s: %(message)s")
    try:
        classes = [ClassSpec(c["name"], tuple(c["aliases"]), tuple(c["dropped"])) for c in manifest["classes"]]
        train = _load_examples(manifest["train"], manifest["max_image_pixels"])
        validation = _load_examples(manifest["validation"], manifest["max_image_pixels"]) if rank == 0 else []
        detector = Detector.load(manifest["model"], device=manifest["device"])

        def report(epoch: EpochResult) -> None:
            row = {"epoch": epoch.epoch, "train_loss": epoch.train_loss, "seconds": epoch.seconds,
                   "learning_rate": epoch.learning_rate, "metrics": epoch.metrics.as_dict()}
            with open(staging / EPOCHS, "a") as file:
                file.write(json.dumps(row) + "\n")

        result = fit(detector, train, validation, classes, staging, TrainingConfig(**manifest["config"]),
                     DetectionSettings(**manifest["eval_settings"]), on_epoch_end=report)
        if rank == 0:
            saved = {"best_epoch": result.best_epoch, "best_dir": str(result.best_dir or ""),
                     "last_dir": str(result.last_dir or "")}
            (staging / RESULT).write_text(json.dumps(saved))
    except BaseException as error:
        (staging / f"error-rank{rank}.txt").write_text(f"process {rank}: {type(error).__name__}: {error}")
        traceback.print_exc()
        raise


if __name__ == "__main__":
    train_process(Path(sys.argv[1]))
