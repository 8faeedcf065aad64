"""The whole loop offline: serve predictions, let a simulated annotator correct them, fine-tune, promote.

Used by ``groundloop demo`` and ``bench/learning``. Everything is real except the people and the pictures:
synthetic shapes with known boxes stand in for a dataset, and the "annotator" corrects each served prediction
to the true boxes. Predictions go through the same store, training rounds through the same worker (its
schedule fires after each batch of new annotations), promotion through the same registry as in production.

Three numbers per round say whether the loop works: the deployed model's mAP on a FIXED held-out set (comparable
across rounds, never trained on), how much the annotator had to change in the predictions served, and the
annotator time those predictions saved against drawing every box (the north star).
"""

from __future__ import annotations

import io
import logging
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import transformers

from active_learning.images import ImageCache
from active_learning.labelstudio.config import label_config_for, parse_label_config
from active_learning.labelstudio.records import AnnotationRecord, ProjectRecord, TaskRecord
from active_learning.labelstudio.regions import boxes_from_result, regions_from_detections
from active_learning.reports.corrections import BoxChanges, compare_boxes, estimate_effort
from active_learning.serving.jobs import make_job
from active_learning.serving.pool import serving_model, starting_model_version
from active_learning.serving.predict import predict_images
from active_learning.settings import Settings
from active_learning.store import Store
from active_learning.training.worker import Worker
from model import Detector, build_small_model
from model.synthetic import SHAPE_CLASSES, SyntheticImage, make_shapes_dataset
from model.training import TrainingExample, evaluate

log = logging.getLogger(__name__)

PROJECT = 1
LABEL_CONFIG = label_config_for(SHAPE_CLASSES)


@dataclass
class RoundRow:
    round: int
    served_version: str
    """The version(s) whose boxes the round's images got, in order (a measuring round can deploy one mid-round)."""
    images: int
    boxes_predicted: int
    boxes_true: int
    accepted_unchanged: int
    corrections: int
    """Boxes the annotator moved, relabeled, deleted or added."""
    edits_per_object: float | None
    """``corrections`` per true object: 1.0 is as much work as drawing every box."""
    time_saved: float | None
    """Estimated annotator time saved against drawing from scratch (``reports.corrections.estimate_effort``)."""
    round_status: str
    """The training round's decision; "start" for round 0, the starting model before any labeling."""
    candidate_val_map: float | None
    baseline_val_map: float | None
    deployed_version: str
    heldout_map: float
    """The deployed model's mAP@[.5:.95] on the fixed held-out set after this round."""
    seconds: float


def demo_settings(work_dir: Path, **overrides) -> Settings:
    """Settings that let the small model learn shapes in seconds per round on a CPU.

    Measured on 2 CPU cores (bench/demo): batches of 2 give twice the steps of 4 for the same time, which the
    random vision side needs; lr 1e-3 learns fast in the first round (1.5e-3 and 2e-3 wrecked the weights later
    rounds start from); patience 5 rides out the noise of a small validation split. What is served is tuned per
    version (prompt choice, calibrated thresholds), so the box threshold is the product's default.
    """
    values = dict(
        data_dir=work_dir / "data", device="auto", image_size=128,
        epochs=15, batch_size=2, learning_rate=1e-3, patience=5, freeze_backbone=False,
        val_fraction=0.25, val_min=4, train_min_new_annotations=1, train_min_interval_minutes=0.0,
    )
    values.update(overrides)
    return Settings(**values)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class SimulatedProject:
    """A Label Studio project as the store sees it, fed by a simulated annotator."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = Store.from_settings(settings)
        self.cache = ImageCache(settings)
        self.worker = Worker(settings, self.store, owner="demo")
        self.store.projects.save(ProjectRecord(PROJECT, LABEL_CONFIG, "groundloop demo", None))
        self.schema = parse_label_config(LABEL_CONFIG)
        self.job = make_job(settings, self.schema, PROJECT)
        """The job of the version serving now (its calibrated thresholds), set by ``serving``."""
        self._detectors: dict[str, Detector] = {}
        self.next_task = 1

    def serving(self) -> tuple[Detector, str]:
        serving = serving_model(self.store, self.settings, PROJECT)
        if serving.source not in self._detectors:
            self._detectors = {serving.source: Detector.load(serving.source, device=self.settings.device)}
        detector = self._detectors[serving.source]
        self.job = make_job(self.settings, self.schema, PROJECT, calibration=serving.calibration)
        return detector, serving.version or starting_model_version(detector)

    def label(self, sample: SyntheticImage) -> BoxChanges:
        """Serve a prediction for a new task, have it corrected to the truth, store the annotation."""
        task_id, self.next_task = self.next_task, self.next_task + 1
        url = f"/data/upload/{PROJECT}/{task_id}.png"
        image = self.cache.put(url, _png(sample.image)).image
        detector, version = self.serving()
        [predicted] = predict_images(detector, [image], self.job)
        self.store.predictions.save(project_id=PROJECT, task_id=task_id, image_url=url, model_version=version,
                                    params_key=self.job.params_key, result=predicted.result, score=predicted.score)
        truth = sample.targets
        truth.data["class_name"] = np.array([SHAPE_CLASSES[c].name for c in truth.class_id], dtype=str)
        final = regions_from_detections(truth, self.job.schema, image.width, image.height)
        now = datetime.now(timezone.utc)
        annotation = AnnotationRecord(
            id=task_id, task_id=task_id, project_id=PROJECT, result=final,
            boxes=boxes_from_result(final)[0], image_size=image.size, was_cancelled=False, completed_by=1,
            lead_time=None, created_at=now, updated_at=now,
            prediction={"result": predicted.result, "model_version": version}, raw={"simulated": True},
        )
        self.store.annotations.save(None, TaskRecord(task_id, PROJECT, {"image": url}), annotation)
        return compare_boxes(boxes_from_result(predicted.result)[0], annotation.boxes)


def run_demo(work_dir: Path, rounds: int = 3, images_per_round: int = 40, heldout_images: int = 40,
             seed: int = 0, report: Callable[[RoundRow], None] | None = None, **overrides) -> list[RoundRow]:
    """``rounds`` labeling rounds of ``images_per_round`` new images each, a training round after each.

    Row 0 is the starting model on the held-out set, before any labeling: the point every round is measured
    against. ``overrides`` replace ``demo_settings`` fields (``model`` replaces the offline small model).
    """
    work_dir = Path(work_dir)
    if "model" not in overrides:
        starting_model = work_dir / "starting-model"
        if not (starting_model / "config.json").exists():
            build_small_model(starting_model, seed=seed)
        overrides["model"] = str(starting_model)
    settings = demo_settings(work_dir, **{"train_min_new_annotations": images_per_round, **overrides})
    project = SimulatedProject(settings)
    pool = make_shapes_dataset(rounds * images_per_round, seed=seed + 1)
    heldout = [TrainingExample(s.image, s.targets) for s in make_shapes_dataset(heldout_images, seed=seed + 2)]
    eval_at = settings.evaluation_settings()
    started = time.monotonic()
    detector, starting_version = project.serving()
    rows = [RoundRow(
        round=0, served_version="-", images=0, boxes_predicted=0, boxes_true=0, accepted_unchanged=0,
        corrections=0, edits_per_object=None, time_saved=None, round_status="start", candidate_val_map=None,
        baseline_val_map=None,
        deployed_version=starting_version, heldout_map=evaluate(detector, heldout, SHAPE_CLASSES, eval_at).map,
        seconds=time.monotonic() - started,
    )]
    if report:
        report(rows[0])
    costs = settings.action_costs()
    for number in range(1, rounds + 1):
        started = time.monotonic()
        served: list[str] = []
        changes = BoxChanges()
        trained = None
        for sample in pool[(number - 1) * images_per_round: number * images_per_round]:
            _, version = project.serving()
            served += [version] if version not in served else []
            changes += project.label(sample)
            # the worker polls after every annotation: a measuring round runs as soon as it is due, a training
            # round once K new annotations arrived (at the end of the round)
            outcome = project.worker.run_once(project_id=PROJECT)
            if outcome is not None and outcome.status == "failed":
                raise RuntimeError(f"round {number}: run {outcome.run_id} failed: {outcome.error}")
            if outcome is not None and outcome.report is not None:
                trained = outcome
        if trained is None:
            raise RuntimeError(f"round {number} did not train")
        detector, deployed_version = project.serving()
        run = project.store.runs.get(trained.run_id)
        effort = estimate_effort(changes, costs)
        row = RoundRow(
            round=number, served_version=" > ".join(served), images=images_per_round,
            boxes_predicted=changes.predicted, boxes_true=changes.final, accepted_unchanged=changes.kept,
            corrections=changes.edits,
            edits_per_object=effort["edits_per_object"], time_saved=effort["time_saved"],
            round_status=trained.status, candidate_val_map=max(e["map"] for e in run.epochs),
            baseline_val_map=trained.report.baseline["map"], deployed_version=deployed_version,
            heldout_map=evaluate(detector, heldout, SHAPE_CLASSES, eval_at).map,
            seconds=time.monotonic() - started,
        )
        rows.append(row)
        if report:
            report(row)
    return rows


TABLE_COLUMNS = ("round", "served_version", "boxes_predicted", "boxes_true", "accepted_unchanged", "corrections",
                 "edits_per_object", "time_saved", "candidate_val_map", "baseline_val_map", "round_status",
                 "heldout_map", "seconds")


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "seconds":
        return f"{value:.0f}"
    if column == "time_saved":
        return f"{100 * value:.0f} %"
    if column == "edits_per_object":
        return f"{value:.2f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(rows: list[RoundRow]) -> str:
    """A Markdown table, readable on a terminal too."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        values = asdict(row)
        cells = [_cell(c, values[c]) for c in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(rows: list[RoundRow], title: str, command: str, seconds: float, plot: str) -> str:
    """The table with what it takes to reproduce and judge it: machine, date, versions, command, total time."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return "\n".join([
        f"# {title}",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total {seconds:.0f} s",
        f"- machine: {cpu}, {torch.get_num_threads()} torch threads, {gpu}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- command: `{command}`",
        "- each round: the deployed model pre-labels the next images, the simulated annotator corrects them to the "
        "truth (corrections = boxes moved, relabeled, deleted or added; IoU 0.5 pairing, 'accepted unchanged' at "
        "IoU >= 0.9 with the right label), the worker polls after every annotation (a measuring round tunes the "
        "starting model after the first few; a training round fires after K new ones, here at the round's end), "
        "the candidate is promoted if its validation mAP beats the deployed model's and it saves annotators no "
        "less time; `edits_per_object` = corrections per true object (`boxes_true`), `time_saved` = 1 - estimated "
        "annotator time with the served boxes / time drawing every box (README, 'Time saved'); `heldout_map` is "
        "the deployed model's mAP@[.5:.95] on fixed images never labeled in the loop (round 0: the starting model)",
        "",
        format_table(rows),
        "",
        f"![rounds]({plot})",
        "",
    ])


def plot_rows(rows: list[RoundRow], path: Path) -> Path:
    """Left: held-out mAP of the deployed model and the fate of the boxes served, per round. Right: the time the
    served boxes saved the annotator (the north star), against drawing every box from scratch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, saved) = plt.subplots(1, 2, figsize=(11, 4), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    _plot_learning(left, rows)
    _plot_time_saved(saved, [r for r in rows if r.time_saved is not None])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_learning(left, rows: list[RoundRow]) -> None:
    rounds = [r.round for r in rows]
    right = left.twinx()  # the boxes, drawn behind the mAP lines
    left.set_zorder(right.get_zorder() + 1)
    left.patch.set_visible(False)
    corrections = [r.corrections for r in rows]
    right.bar(rounds, corrections, width=0.5, color="tab:red", alpha=0.2, label="boxes corrected (right axis)")
    right.bar(rounds, [r.accepted_unchanged for r in rows], width=0.5, bottom=corrections, color="tab:green",
              alpha=0.5, label="boxes accepted unchanged (right axis)")
    right.set_ylabel("boxes, per round's images")
    right.set_ylim(0, max(max(c + r.accepted_unchanged for c, r in zip(corrections, rows)), 1) * 1.5)
    heldout = [r.heldout_map for r in rows]
    left.plot(rounds, heldout, marker="o", linewidth=2, color="tab:blue", label="held-out mAP of the deployed model")
    for x, value in zip(rounds, heldout):
        left.annotate(f"{value:.3f}", (x, value), textcoords="offset points", xytext=(7, -12), ha="left",
                      fontsize=8, color="tab:blue")
    trained = [r for r in rows if r.candidate_val_map is not None]
    left.plot([r.round for r in trained], [r.candidate_val_map for r in trained], marker=".", linestyle=":",
              color="tab:cyan", label="round's best validation mAP")
    left.set_xlabel("labeling round (0: the starting model)")
    left.set_ylabel("mAP@[.5:.95]")
    left.set_xticks(rounds)
    left.set_ylim(0, max([*heldout, *(r.candidate_val_map for r in trained), 0.01]) * 1.35)
    handles, labels = (a + b for a, b in zip(left.get_legend_handles_labels(), right.get_legend_handles_labels()))
    left.legend(handles, labels, fontsize=7.5, loc="upper left", framealpha=0.9)
    left.set_title("the model improves as the annotator corrects it", fontsize=10)


def _plot_time_saved(ax, rows: list[RoundRow]) -> None:
    rounds = [r.round for r in rows]
    values = [100 * r.time_saved for r in rows]
    ax.bar(rounds, values, width=0.5, color=["tab:green" if v >= 0 else "tab:red" for v in values], alpha=0.7)
    for x, value, row in zip(rounds, values, rows):
        ax.annotate(f"{value:.0f} %\n{row.edits_per_object:.2f} edits/obj", (x, value), textcoords="offset points",
                    xytext=(0, 4 if value >= 0 else -22), ha="center", fontsize=7.5)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(50, color="grey", linestyle="--", linewidth=0.8, label="50 %: half the labeling time")
    ax.set_xticks(rounds)
    ax.set_xlabel("labeling round")
    ax.set_ylabel("annotator time saved vs drawing from scratch (%)")
    low = min([*values, 0.0])
    ax.set_ylim(max(low * 1.3 - 5, -300), 100)
    ax.legend(fontsize=7.5, loc="upper left")
    ax.set_title("time the served boxes saved the annotator", fontsize=10)
