"""bench/learning/labels.py: custom labels learned across labeling rounds (two labels sharing one phrase).

The "red team" / "blue team" squares (``model.synthetic.TEAM_LABELS``: the same shape, told apart only by colour,
both ``predicted_values="square"``) are labeled a few images per round; after each round the worker runs what it
would (a measuring round first, then classifier rounds) and the deployed version's heads name the human boxes of
fixed held-out images through the served labeling step. Backbone: the dinov2-small architecture with random
weights (the hub is unreachable here; pretrained weights separate far more than colours).

    .venv/bin/python bench/learning/labels.py [--rounds 5] [--images-per-round 4]

Writes bench/learning/labels-<date>.md.
"""

from __future__ import annotations

import argparse
import io
import logging
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import supervision as sv
import torch
import transformers

from active_learning.images import ImageCache
from active_learning.labelstudio.config import parse_label_config
from active_learning.labelstudio.records import AnnotationRecord, ProjectRecord, TaskRecord
from active_learning.serving.jobs import project_job
from active_learning.serving.labeling import assign_labels
from active_learning.serving.pool import ModelPool
from active_learning.settings import Settings
from active_learning.store import Store
from active_learning.training.worker import Worker
from model.factory import build_dinov2_small_architecture, build_small_model
from model.synthetic import TEAM_LABELS, TEAM_PHRASE, make_teams_dataset

HERE = Path(__file__).parent
PROJECT = 1
CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
          + "".join(f'<Label value="{t.name}" predicted_values="{TEAM_PHRASE}"/>' for t in TEAM_LABELS)
          + "</RectangleLabels></View>")


def _label(store: Store, cache: ImageCache, task_id: int, sample) -> None:
    """The annotator's boxes for one image, stored as Label Studio's annotation would be."""
    buffer = io.BytesIO()
    sample.image.save(buffer, format="PNG")
    url = f"/data/upload/{PROJECT}/{task_id}.png"
    cache.put(url, buffer.getvalue())
    boxes = [{"label": TEAM_LABELS[c].name, "box": [float(v) for v in box], "from_name": "label"}
             for box, c in zip(sample.targets.xyxy.tolist(), sample.targets.class_id.tolist())]
    now = datetime.now(timezone.utc)
    annotation = AnnotationRecord(id=task_id, task_id=task_id, project_id=PROJECT, result=[], boxes=boxes,
                                  image_size=sample.image.size, was_cancelled=False, completed_by=1, lead_time=None,
                                  created_at=now, updated_at=now, prediction=None, raw={"simulated": True})
    store.annotations.save(ProjectRecord(PROJECT, CONFIG, "labels bench", None),
                           TaskRecord(task_id, PROJECT, {"image": url}), annotation)


def _served_accuracy(settings: Settings, store: Store, pool: ModelPool, heldout) -> float:
    model = pool.model_for(PROJECT)
    job = project_job(settings, store, parse_label_config(CONFIG), PROJECT, calibration=model.calibration,
                      classifier=model.classifier)
    right = total = 0
    for sample in heldout:
        truth = sample.targets
        found = sv.Detections(xyxy=truth.xyxy.copy(), confidence=np.ones(len(truth)),
                              class_id=np.zeros(len(truth), dtype=int),
                              data={"class_name": np.array([TEAM_PHRASE] * len(truth))})
        assign_labels(sample.image, found, job, settings.device)
        right += sum(str(n) == TEAM_LABELS[c].name for n, c in zip(found.data["class_name"], truth.class_id))
        total += len(truth)
    return right / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images-per-round", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    samples = make_teams_dataset(args.rounds * args.images_per_round + 60, seed=5)
    heldout, stream = samples[-60:], samples[:-60]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = Settings(data_dir=tmp / "data", model=str(build_small_model(tmp / "detector")), device="cpu",
                            classifier_backbone=str(build_dinov2_small_architecture(tmp / "dinov2-small")),
                            image_size=128, train_min_new_annotations=10_000, measure_min_annotations=1,
                            classifier_min_new_annotations=1, val_fraction=0.25, val_min=2)
        store, cache = Store.from_settings(settings), ImageCache(settings)
        worker, pool = Worker(settings, store, owner="bench"), ModelPool(settings, store)
        rows.append(("0", 0, "-", "-", "-", "-", f"{_served_accuracy(settings, store, pool, heldout):.2f}", "-"))
        for round_number in range(1, args.rounds + 1):
            for k in range(args.images_per_round):
                task_id = (round_number - 1) * args.images_per_round + k + 1
                _label(store, cache, task_id, stream[task_id - 1])
            round_started = time.monotonic()
            outcome = worker.run_once(project_id=PROJECT)
            seconds = time.monotonic() - round_started
            run = store.runs.get(outcome.run_id)
            deployed = store.models.deployed(PROJECT)
            group = ((deployed.metrics if deployed else {}).get("classifier") or {}).get("groups", {}).get(
                TEAM_PHRASE, {})
            accuracy = _served_accuracy(settings, store, pool, heldout)
            rows.append((str(round_number), round_number * args.images_per_round, f"{run.trigger}: {run.status}",
                         group.get("crops", "-"), _fmt(group.get("val_accuracy")), group.get("val_crops", "-"),
                         f"{accuracy:.2f}", f"{seconds:.1f}"))
            print(rows[-1], flush=True)
    (HERE / f"labels-{datetime.now(timezone.utc):%Y-%m-%d}.md").write_text(_markdown(rows, args, started))


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _markdown(rows, args, started: float) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    headers = ("round", "images labeled", "round (trigger: status)", "head's training crops", "head val accuracy",
               "val crops", "served label accuracy (held-out)", "round seconds")
    table = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    table += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join([
        "# Custom labels across labeling rounds (two labels sharing one phrase)",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total {time.monotonic() - started:.0f} s",
        f"- machine: {cpu}, {torch.get_num_threads()} torch threads, {platform.machine()}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- command: `.venv/bin/python bench/learning/labels.py --rounds {args.rounds} --images-per-round "
        f"{args.images_per_round}`",
        "- data: squares on noise, red or blue (`model.synthetic.make_teams_dataset`), both labels "
        "`predicted_values=\"square\"`; backbone: the dinov2-small architecture with RANDOM weights; 60 held-out "
        "images never labeled",
        "- each round the annotator labels the next images; the worker runs what it would (round 1: the measuring "
        "round, which trains the first heads; then classifier rounds); a head is deployed only if its validation "
        "accuracy beats what served. `served label accuracy` = share of the held-out images' human boxes the "
        "deployed version names right through the served labeling step (round 0 and any round without a head: "
        "the most used label)",
        "",
        *table,
        "",
    ])


if __name__ == "__main__":
    main()
