"""What ``GET /status`` and ``groundloop status`` show, per project: which model version is deployed and which
serves, the recent training rounds, every model version (with the box thresholds it serves per class and the
classes it abstains from, calibrated by its round: ``serving.calibration``), the classifier heads of labels sharing
a phrase (trained or not, on how many crops, validation accuracy), and how much annotators corrected
each version and what that cost them (true objects, edits per object, time saved against drawing every box; see
``corrections``).

Correction statistics are listed oldest version first: versions not in the registry (the starting model) in the
order annotations first started from them, then registered versions by creation. A round's version serves the
next labeling round, so the rows read as the trend of annotator effort round by round."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any, Callable

from active_learning.reports.corrections import ActionCosts, CorrectionSummary, correction_stats
from active_learning.serving.calibration import Calibration
from active_learning.store import Store
from active_learning.store.tables import ModelVersion, TrainingRun

RECENT_RUNS = 10


def collect_status(store: Store, project_ids: list[int] | None = None,
                   serving_version: Callable[[int], str | None] | None = None,
                   costs: ActionCosts | None = None) -> dict[str, Any]:
    """``serving_version(project_id)``: what a server answers with now (the server knows the starting model's
    version); without it, the deployed version, None meaning the starting model. ``costs``: the annotator action
    costs for the effort estimate (``settings.action_costs()``); without them, the settings' defaults."""
    ids = store.projects.ids() if project_ids is None else project_ids
    costs = costs or ActionCosts.from_settings()
    return {"action_costs": asdict(costs),
            "projects": [project_status(store, project_id, serving_version, costs) for project_id in ids]}


def project_status(store: Store, project_id: int,
                   serving_version: Callable[[int], str | None] | None = None,
                   costs: ActionCosts | None = None) -> dict[str, Any]:
    project = store.projects.get(project_id)
    deployed = store.models.deployed(project_id)
    versions = store.models.versions(project_id)
    by_name = {version.name: version for version in versions}
    return {
        "project": project_id,
        "title": project.title if project else None,
        "deployed_version": deployed.name if deployed else None,
        "serving_version": serving_version(project_id) if serving_version else (deployed.name if deployed else None),
        "label_studio_model_version": project.model_version if project else None,
        "tasks": len(store.tasks.ids(project_id)),
        "annotations": store.annotations.count(project_id),
        "training_runs": [_run(run, by_name.get(run.model_version or ""))
                          for run in store.runs.of_project(project_id)[:RECENT_RUNS]],
        "model_versions": [_version(version) for version in versions],
        "label_groups": _label_groups(store, project_id, deployed),
        "corrections": {summary.model_version: summary.as_dict() for summary in _by_creation(
            correction_stats(store, project_id, costs or ActionCosts.from_settings()), by_name)},
    }


def _by_creation(summaries: dict[str, CorrectionSummary],
                 registered: dict[str, ModelVersion]) -> list[CorrectionSummary]:
    """Unregistered versions (the starting model) first, as first annotated; then registered ones as created."""
    def key(summary: CorrectionSummary) -> tuple:
        version = registered.get(summary.model_version)
        return (1, version.created_at, version.id) if version else (0,)

    return sorted(summaries.values(), key=key)  # stable: unregistered keep the order they were first annotated


def _run(run: TrainingRun, candidate: ModelVersion | None) -> dict[str, Any]:
    """A run; its best epoch, best and baseline metrics are those recorded with the candidate it produced."""
    metrics = candidate.metrics if candidate else {}
    return {
        "id": run.id, "trigger": run.trigger, "status": run.status, "model_version": run.model_version,
        "train_size": run.train_size, "val_size": run.val_size, "epochs": run.epochs,
        "best_epoch": metrics.get("best_epoch"), "best": metrics.get("val"), "baseline": metrics.get("baseline"),
        "error": run.error, "requested_at": _time(run.requested_at), "started_at": _time(run.started_at),
        "finished_at": _time(run.finished_at),
    }


def _version(version: ModelVersion) -> dict[str, Any]:
    """``calibration``: the thresholds the version serves per class, the classes it abstains from and the time
    saved estimated on validation (``serving.calibration``); None for a version without one (the settings' or
    the config's threshold serves)."""
    calibration = Calibration.from_metrics(version.metrics)
    return {"name": version.name, "status": version.status, "parent": version.parent, "metrics": version.metrics,
            "calibration": None if calibration is None else {
                "thresholds": dict(calibration.thresholds), "abstained": list(calibration.abstained),
                "val_time_saved": calibration.val_time_saved,
                "dropped": {name: list(phrases) for name, phrases in calibration.dropped.items()},
                "nms_iou": calibration.nms_iou},
            "measured_only": bool(version.metrics.get("measured_only")),
            "created_at": _time(version.created_at)}


def _label_groups(store: Store, project_id: int, deployed: ModelVersion | None) -> list[dict[str, Any]]:
    """The config's label groups (labels sharing a phrase) and, per group, the deployed version's head: trained in
    which round, on how many crops, its validation accuracy (``training.label_heads``); ``trained`` false while
    the group's boxes are served with the most used label."""
    schema = store.projects.schema(project_id)
    heads = ((deployed.metrics or {}).get("classifier") or {}).get("groups", {}) if deployed else {}
    groups = []
    for group in schema.label_groups if schema else ():
        head = heads.get(group.phrase) or {}
        groups.append({"phrase": group.phrase, "labels": list(group.labels),
                       "trained": head.get("trained_in") is not None and head.get("labels") == list(group.labels),
                       "trained_in": head.get("trained_in"), "crops": head.get("crops"),
                       "val_accuracy": head.get("val_accuracy"), "val_crops": head.get("val_crops")})
    return groups


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat(sep=" ", timespec="seconds") if moment else None


# --- as text, for the command line -------------------------------------------------------------------------

def render_status(status: dict[str, Any]) -> str:
    if not status["projects"]:
        return "no projects yet (Label Studio has not called this backend)"
    return "\n\n".join(_render_project(project, status.get("action_costs")) for project in status["projects"])


def _render_project(p: dict[str, Any], costs: dict[str, float] | None = None) -> str:
    title = f' "{p["title"]}"' if p["title"] else ""
    lines = [
        f"project {p['project']}{title}",
        f"  deployed: {p['deployed_version'] or 'none (the starting model serves)'}",
        f"  serving:  {p['serving_version'] or 'the starting model'}",
        f"  Label Studio's model_version: {p['label_studio_model_version'] or '-'}",
        f"  tasks: {p['tasks']}, annotations: {p['annotations']}",
        "",
        "  training runs (newest first):",
        *_table(["run", "status", "trigger", "train/val", "epochs", "best epoch", "mAP", "baseline mAP", "finished",
                 "error"],
                [[r["id"], r["status"], r["trigger"], f"{_num(r['train_size'])}/{_num(r['val_size'])}",
                  len(r["epochs"]), _num(r["best_epoch"]), _map(r["best"]), _map(r["baseline"]),
                  r["finished_at"] or "-", (r["error"] or "")[:60]] for r in p["training_runs"]]),
        "",
        "  model versions:",
        *_table(["name", "status", "parent", "val mAP", "created"],
                [[v["name"], v["status"], v["parent"] or "-",
                  "measured, not trained" if v.get("measured_only") else _map(v["metrics"].get("val")),
                  v["created_at"]] for v in p["model_versions"]]),
        "",
        "  served pipeline (prompt choice and thresholds tuned on validation; a model_score_threshold in the "
        "config wins):",
        *([f"    {v['name']}: {_calibration(v.get('calibration'))}" for v in p["model_versions"]] or ["    (none)"]),
        "",
        *(["  custom labels (labels sharing a phrase, told apart by the deployed version's classifier heads):",
           *[f"    {g['phrase']} -> {', '.join(g['labels'])}: {_head(g)}" for g in p["label_groups"]], ""]
          if p.get("label_groups") else []),
        "  corrections by annotators (boxes of each version's predictions, oldest version first):",
        *_table(["model version", "annotations", "unchanged", "kept", "moved", "relabeled", "deleted", "added",
                 "precision", "recall", "true objects", "edits/object", "time saved"],
                [row for c in p["corrections"].values() for row in _correction_rows(c)]),
        *(_effort_legend(costs) if p["corrections"] else []),
    ]
    return "\n".join(lines)


def _effort_legend(costs: dict[str, float] | None) -> list[str]:
    lines = ["    time saved = 1 - (annotator seconds with our boxes) / (seconds drawing every true object): > 0 saves "
             "time, < 0 slower than from scratch"]
    if costs:
        lines.append("    seconds per action: " + ", ".join(
            f"{action} {costs[action]:g}" for action in ("verify", "adjust", "relabel", "delete", "draw")))
    return lines


def _correction_rows(c: dict[str, Any]) -> list[list[Any]]:
    """A version's row, then one per control when the config has several."""
    def row(name: str, counts: dict[str, Any], annotations: Any, unchanged: Any) -> list[Any]:
        return [name, annotations, unchanged, counts["kept"], counts["moved"], counts["relabeled"], counts["deleted"],
                counts["added"], _ratio(counts["precision"]), _ratio(counts["recall"]),
                _num(counts.get("true_objects")), _ratio(counts.get("edits_per_object")),
                _percent(counts.get("time_saved"))]

    rows = [row(c["model_version"], c, c["annotations"], c["unchanged_annotations"])]
    if len(c.get("controls", {})) > 1:
        rows += [row(f"  control {name}", counts, "", "") for name, counts in c["controls"].items()]
    return rows


def _calibration(c: dict[str, Any] | None) -> str:
    if not c:
        return "not calibrated (the settings' threshold)"
    parts = [f"{name} > {threshold:.3f}" for name, threshold in sorted(c["thresholds"].items())]
    parts += [f"{name} abstained" for name in c["abstained"]]
    dropped = [f"{name}: not searching {', '.join(repr(p) for p in phrases)}"
               for name, phrases in sorted((c.get("dropped") or {}).items())]
    nms = [f"NMS IoU {c['nms_iou']:g}"] if c.get("nms_iou") is not None else []
    return "; ".join([", ".join(parts or ["no class calibrated"]), *dropped, *nms,
                      f"val time saved {_percent(c.get('val_time_saved'))}"])


def _head(group: dict[str, Any]) -> str:
    if not group["trained"]:
        return "no head yet (served as the most used label, with a low score)"
    accuracy = "-" if group["val_accuracy"] is None else f"{group['val_accuracy']:.2f}"
    return (f"head trained in {group['trained_in']} on {group['crops']} crops, val accuracy {accuracy} on "
            f"{_num(group['val_crops'])} crops")


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return ["    (none)"]
    cells = [headers, *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["    " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]


def _num(value: Any) -> str:
    return "-" if value is None else str(value)


def _map(metrics: dict | None) -> str:
    return f"{metrics['map']:.3f}" if metrics and metrics.get("map") is not None else "-"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
