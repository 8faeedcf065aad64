"""One training round: data from the store, fine-tune, compare with what serves, promote or reject, report.

A round runs in the worker process (never in a web request) under a lease in the database, so two workers
never train the same project at once. Whatever happens, the run ends with a status: ``succeeded`` (the
candidate beat the deployed model by the promotion margin and now serves), ``rejected`` (it did not; serving
is unchanged) or ``failed`` (an error; its text is kept). Checkpoints are written under a staging directory
and only moved into the registry complete, so a crash never leaves a half-written deployed model.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from active_learning.images import ImageCache, cache_labeled_images
from active_learning.reports.corrections import correction_stats
from active_learning.serving.calibration import Calibration
from active_learning.serving.prompt_choice import tune_served_pipeline
from active_learning.serving.labeling import VersionClassifier
from active_learning.serving.pool import LoadedModel, ServingModel, serving_model
from active_learning.settings import Settings
from active_learning.store import Store
from active_learning.training.dataset import Dataset, build_dataset
from active_learning.training.distributed import fit_on_processes, write_manifest
from active_learning.training.label_heads import save_version_heads, train_project_heads
from active_learning.training.promotion import ap_drops, decide, percent
from active_learning.training.registry import checkpoint_name, register
from active_learning.training.round_report import RoundReport, write_report
from model.classifier import ClassifierError
from model.detector import Detector
from model.training import EpochResult, FitResult, TrainingExample, evaluate, fit

log = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    run_id: int
    status: str
    model_version: str | None
    report: RoundReport | None = None
    error: str | None = None
    announcements: list[str] = field(default_factory=list)


class _LeaseKeeper:
    """Renews the run's lease in a thread while training runs; a lost lease stops nothing but is logged."""

    def __init__(self, store: Store, run_id: int, owner: str, lease_seconds: float):
        self.store, self.run_id, self.owner, self.lease_seconds = store, run_id, owner, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{run_id}", daemon=True)

    def __enter__(self) -> "_LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            if not self.store.runs.renew_lease(self.run_id, self.owner, self.lease_seconds):
                log.error("run %d: lease lost to another worker", self.run_id)


def run_round(settings: Settings, store: Store, run_id: int, owner: str,
              prepare: Callable[[int], None] | None = None,
              after_epoch: Callable[[EpochResult], None] | None = None, processes: int = 1) -> RoundOutcome:
    """Train the claimed run ``run_id`` to its end; never raises for a failure of the round itself.

    ``prepare(project_id)`` runs first (reconciliation with Label Studio); ``after_epoch`` is a hook for
    progress (and for tests that inject faults). ``processes`` > 1 fine-tunes on that many DDP processes
    (``distributed``); everything else of the round stays in this process.
    """
    run = store.runs.get(run_id)
    project_id = run.project_id
    staging = settings.models_dir / ".staging" / f"run-{run_id}"
    started = time.monotonic()
    try:
        with _LeaseKeeper(store, run_id, owner, settings.lease_seconds):
            if prepare is not None:
                prepare(project_id)
            cache = ImageCache(settings)
            for line in cache_labeled_images(store, cache, project_id):
                log.warning("project %d: %s", project_id, line)
            if run.trigger == CLASSIFY:
                return _retrain_classifier(settings, store, run_id, project_id)
            dataset = build_dataset(store, cache, project_id, settings.val_fraction, settings.val_min)
            if run.trigger == MEASURE:
                outcome = _measure_starting_model(settings, store, run_id, project_id, dataset)
            else:
                _check_enough(dataset, project_id)
                store.runs.update(run_id, train_size=len(dataset.train), val_size=len(dataset.validation))
                outcome = _train_and_decide(settings, store, run_id, project_id, dataset, staging, after_epoch,
                                            started, processes)
    except Exception as error:  # noqa: BLE001 - a round's failure is recorded, the worker goes on
        log.exception("run %d (project %d) failed", run_id, project_id)
        message = f"{type(error).__name__}: {error}"
        store.runs.finish(run_id, "failed", error=message)
        return RoundOutcome(run_id, "failed", None, error=message)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outcome


MEASURE = "measure"
"""The trigger of a measuring round (``Worker.schedule_due_rounds``): tune the starting model, train nothing."""
CLASSIFY = "classify"
"""The trigger of a classifier round: retrain the heads of label groups alone, on the deployed version's weights."""


def _measure_starting_model(settings: Settings, store: Store, run_id: int, project_id: int,
                            dataset: Dataset) -> RoundOutcome:
    """Tune what the starting model serves (prompt choice, thresholds, abstention) on every labeled image, and
    deploy that as a version of the same weights: the starting model was trained on none of them, so all measure
    it, and the project gets calibrated boxes long before a fine-tuned version earns its place."""
    serving = serving_model(store, settings, project_id)
    examples = dataset.train + dataset.validation
    if serving.version is not None or not examples:
        why = f"{serving.version} serves already" if serving.version else "no labeled image to measure on"
        store.runs.finish(run_id, "rejected", error=f"nothing to measure: {why}")
        return RoundOutcome(run_id, "rejected", None, error=why)
    store.runs.update(run_id, train_size=0, val_size=len(examples))
    starting = LoadedModel.load(serving, settings.device)
    calibration = _tune(settings, starting.detector, dataset, examples)
    name = checkpoint_name(project_id, run_id)
    decision = (f"measured {starting.version} on {len(examples)} labeled images: time saved "
                f"{percent(calibration.val_time_saved)} with its tuned prompt and thresholds (no training)")
    store.models.add(name, serving.source, project_id=project_id, parent=starting.version, status="deployed",
                     metrics={"calibration": calibration.as_metrics(), "val_size": len(examples),
                              "weights_digest": starting.detector.version_digest, "measured_only": True,
                              "decision": decision, **_heads_metrics(settings, store, project_id, name, None, None)})
    store.runs.finish(run_id, "succeeded", model_version=name)
    log.info("run %d: %s; deployed as %s (thresholds %s, abstained %s, dropped %s)", run_id, decision, name,
             dict(calibration.thresholds), list(calibration.abstained), dict(calibration.dropped))
    return RoundOutcome(run_id, "succeeded", name)


def _check_enough(dataset: Dataset, project_id: int) -> None:
    if not dataset.train or not dataset.validation:
        raise ValueError(
            f"project {project_id} has {len(dataset.train)} training and {len(dataset.validation)} validation "
            "images; a round needs at least one of each (label more tasks, or lower GROUNDLOOP_VAL_MIN)")


def _train_and_decide(settings: Settings, store: Store, run_id: int, project_id: int, dataset: Dataset,
                      staging: Path, after_epoch, started: float, processes: int = 1) -> RoundOutcome:
    serving = serving_model(store, settings, project_id)
    deployed = LoadedModel.load(serving, settings.device)
    deployed_version, deployed_classifier = deployed.version, deployed.classifier
    baseline = evaluate(deployed.detector, dataset.validation, dataset.classes, settings.evaluation_settings())
    baseline_saved = _tune(settings, deployed.detector, dataset).val_time_saved
    log.info("run %d: deployed %s scores val mAP %.4f, time saved %s on %d images", run_id, deployed_version,
             baseline.map, percent(baseline_saved), len(dataset.validation))
    del deployed

    def on_epoch_end(epoch: EpochResult) -> None:
        store.runs.update(run_id, epoch={
            "epoch": epoch.epoch, "train_loss": epoch.train_loss, "seconds": round(epoch.seconds, 2),
            "learning_rate": epoch.learning_rate,
            **epoch.metrics.as_dict()})
        if after_epoch is not None:
            after_epoch(epoch)

    refining = serving.source != settings.model  # the deployed weights were fine-tuned here already
    config = settings.training_config(refining)
    if processes == 1:
        candidate = Detector.load(serving.source, device=settings.device)
        result = fit(candidate, dataset.train, dataset.validation, dataset.classes, staging, config,
                     settings.evaluation_settings(), on_epoch_end=on_epoch_end)
    else:
        candidate = None  # trained in the other processes: the best checkpoint is loaded from disk
        manifest = _write_manifest(settings, dataset, staging, serving.source, config)
        result = fit_on_processes(manifest, processes, on_epoch_end)
    best = result.epochs[result.best_epoch - 1].metrics
    effort = correction_stats(store, project_id, settings.action_costs()).get(deployed_version)
    calibration = _calibrate(settings, candidate, result, dataset)
    log.info("run %d: tuned thresholds %s, abstained %s, dropped phrases %s, NMS IoU %s, val time saved %s", run_id,
             dict(calibration.thresholds), list(calibration.abstained), dict(calibration.dropped),
             calibration.nms_iou, percent(calibration.val_time_saved))
    promote, decision = decide(best.map, baseline.map, settings.promotion_margin, calibration.val_time_saved,
                               baseline_saved)
    drops = ap_drops(baseline.per_class_ap, best.per_class_ap, settings.ap_drop_margin)
    for label, (before, after) in drops.items():
        log.warning("run %d: class %r val AP fell from %.3f to %.3f", run_id, label, before, after)
    name = checkpoint_name(project_id, run_id)
    metrics = {"val": best.as_dict(), "baseline": baseline.as_dict(), "best_epoch": result.best_epoch,
               "train_size": len(dataset.train), "val_size": len(dataset.validation),
               "calibration": calibration.as_metrics(), "baseline_val_time_saved": baseline_saved,
               "decision": decision, "ap_drops": drops,
               **_heads_metrics(settings, store, project_id, name, deployed_classifier, deployed_version)}
    register(store, settings, result.best_dir, name, project_id=project_id, parent=deployed_version,
             metrics=metrics, deploy=promote)
    status = "succeeded" if promote else "rejected"
    report = RoundReport(
        run_id=run_id, project_id=project_id, status=status, candidate=name, baseline_version=deployed_version,
        baseline=baseline.as_dict(), epochs=store.runs.get(run_id).epochs, best_epoch=result.best_epoch,
        train_size=len(dataset.train), val_size=len(dataset.validation), margin=settings.promotion_margin,
        seconds=time.monotonic() - started, skipped=dataset.skipped,
        baseline_effort=effort.as_dict() if effort else None, calibration=calibration.as_metrics(),
        baseline_val_time_saved=baseline_saved, decision=decision, ap_drops=drops,
    )
    write_report(report, settings.reports_dir)
    store.runs.finish(run_id, status, model_version=name)
    log.info("run %d: candidate %s %s: %s", run_id, name, "PROMOTED" if promote else "rejected, serving unchanged",
             decision)
    return RoundOutcome(run_id, status, name, report)


def _heads_metrics(settings: Settings, store: Store, project_id: int, name: str,
                   served: VersionClassifier | None, served_version: str | None) -> dict:
    """``{"classifier": ...}`` for candidate ``name``: the heads of the project's label groups trained now and kept
    where they beat what ``served_version`` serves (``label_heads``); {} for a project without label groups."""
    schema = store.projects.schema(project_id)
    trained = train_project_heads(settings, store, project_id, schema, served, served_version) if schema else None
    if trained is None:
        return {}
    choice, digest = trained
    return {"classifier": save_version_heads(settings, name, choice, digest)}


def _retrain_classifier(settings: Settings, store: Store, run_id: int, project_id: int) -> RoundOutcome:
    """A classifier round: new heads on the deployed version's weights and calibration, deployed as a version of
    their own when some group's head beats what serves (``label_heads``); the detector is not touched."""
    deployed = store.models.deployed(project_id)
    schema = store.projects.schema(project_id)
    if deployed is None or schema is None or not schema.label_groups:
        why = "no deployed version to add heads to" if deployed is None else "the project has no label groups"
        store.runs.finish(run_id, "rejected", error=f"nothing to classify: {why}")
        return RoundOutcome(run_id, "rejected", None, error=why)
    serving = ServingModel.of_version(deployed, settings.data_dir)
    try:
        served = VersionClassifier.load(serving.classifier) if serving.classifier else None
    except ClassifierError as exc:
        log.warning("run %d: the heads of %s do not load (%s); training new ones", run_id, deployed.name, exc)
        served = None
    name = checkpoint_name(project_id, run_id)
    choice, digest = train_project_heads(settings, store, project_id, schema, served, deployed.name)
    accuracies = ", ".join(f"{phrase} {_accuracy(group)}" for phrase, group in choice.groups.items())
    if not choice.improved:
        decision = f"no head beat what {deployed.name} serves (val accuracy: {accuracies})"
        store.runs.finish(run_id, "rejected", error=decision)
        log.info("run %d: %s; serving unchanged", run_id, decision)
        return RoundOutcome(run_id, "rejected", None, error=decision)
    decision = f"new heads for {', '.join(choice.improved)} on the weights of {deployed.name} (val accuracy: " \
               f"{accuracies})"
    metrics = {**(deployed.metrics or {}), "classifier": save_version_heads(settings, name, choice, digest),
               "classifier_only": True, "decision": decision}
    store.models.add(name, deployed.path, project_id=project_id, parent=deployed.name, status="deployed",
                     metrics=metrics)
    store.runs.finish(run_id, "succeeded", model_version=name)
    log.info("run %d: %s; deployed as %s", run_id, decision, name)
    return RoundOutcome(run_id, "succeeded", name)


def _accuracy(group: dict) -> str:
    return "-" if group.get("val_accuracy") is None else f"{group['val_accuracy']:.2f}"


def _write_manifest(settings: Settings, dataset: Dataset, staging: Path, source: str, config) -> Path:
    """The round's data for the training processes: the cached image files of the dataset's examples."""
    return write_manifest(staging, dataset.classes, dataset.train, dataset.train_files,
                          dataset.validation, dataset.validation_files, model=source,
                          device=settings.device, config=config, eval_settings=settings.evaluation_settings(),
                          max_image_pixels=settings.max_image_pixels, log_level=settings.log_level)


def _calibrate(settings: Settings, candidate: Detector | None, result: FitResult, dataset: Dataset) -> Calibration:
    """The served thresholds of the BEST checkpoint (what is registered), on the validation split.

    ``fit`` leaves the candidate in memory at its last epoch: when that is not the best one (or the candidate
    trained in other processes: None), the best checkpoint is loaded from ``best_dir``. Detection is as served,
    down to the evaluation threshold.
    """
    detector = candidate if candidate is not None and result.best_epoch == len(result.epochs) else \
        Detector.load(result.best_dir, device=settings.device)
    detector.model.eval()
    return _tune(settings, detector, dataset)


def _tune(settings: Settings, detector: Detector, dataset: Dataset,
          examples: list[TrainingExample] | None = None) -> Calibration:
    """The served pipeline of ``detector`` (prompt choice, thresholds, NMS IoU) tuned on ``examples`` (the
    validation split by default), detecting as served down to the evaluation threshold."""
    floor = settings.evaluation_settings().box_threshold
    return tune_served_pipeline(detector, dataset.validation if examples is None else examples, dataset.classes,
                                settings.detection_settings(box_threshold=floor), settings.action_costs())
