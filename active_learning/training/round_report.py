"""A round's report: a JSON record and a PNG of validation mAP per epoch against the deployed baseline."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class RoundReport:
    run_id: int
    project_id: int
    status: str
    candidate: str
    baseline_version: str
    baseline: dict
    epochs: list[dict]
    best_epoch: int
    train_size: int
    val_size: int
    margin: float
    seconds: float
    skipped: list[str] = field(default_factory=list)
    baseline_effort: dict | None = None
    """What the version the round started from (the deployed one, ``baseline_version``) cost annotators so far:
    its correction summary with the effort estimate (``CorrectionSummary.as_dict()``: true objects, seconds with
    its boxes and from scratch, time saved, edits per object); None when no annotation started from its boxes."""
    calibration: dict | None = None
    """The candidate's served thresholds per class, abstained classes and estimated time saved on the validation
    images (``Calibration.as_metrics()``)."""
    baseline_val_time_saved: float | None = None
    """The deployed model's estimated time saved on the same validation images, calibrated the same way."""
    decision: str = ""
    """Why the candidate was promoted or rejected, in one line."""
    ap_drops: dict = field(default_factory=dict)
    """Classes whose validation AP fell by more than ``ap_drop_margin``: ``{class: [deployed AP, candidate AP]}``."""

    @property
    def stem(self) -> str:
        return f"project-{self.project_id}/run-{self.run_id}"


def plot_round(report: RoundReport, path: Path) -> Path:
    epochs = [e["epoch"] for e in report.epochs]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(epochs, [e["map"] for e in report.epochs], marker="o", label="candidate mAP@[.5:.95]")
    ax.plot(epochs, [e["map50"] for e in report.epochs], marker=".", linestyle=":", label="candidate mAP@.5")
    ax.axhline(report.baseline["map"], color="grey", linestyle="--",
               label=f"deployed {report.baseline_version}: {report.baseline['map']:.3f}")
    best = report.epochs[report.best_epoch - 1]
    ax.scatter([best["epoch"]], [best["map"]], s=120, facecolors="none", edgecolors="red", zorder=3,
               label=f"best epoch {best['epoch']}: {best['map']:.3f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP")
    ax.set_title(f"project {report.project_id}, run {report.run_id}: {report.status}\n{report.decision}", fontsize=8)
    ax.set_xticks(epochs)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: RoundReport, reports_dir: Path) -> tuple[Path, Path]:
    """``<reports>/project-P/run-R.json`` and ``.png``."""
    base = Path(reports_dir) / report.stem
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(asdict(report), indent=2))
    return json_path, plot_round(report, base.with_suffix(".png"))
