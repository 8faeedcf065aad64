"""Which weights serve a project, and the detectors a server process holds.

A project without a deployed version (``training.registry``) is served by the starting model (``Settings.model``:
a hub id or a directory). Loading a version whose weights no longer match the digest recorded when it was
registered fails. Server processes hold their detectors in a ``ModelPool``, which asks the store on every request which version serves the project: a version the worker
deploys serves the next request, without a restart. A deployed version that fails to load is logged and the
project is served by the version it was trained from (or the starting model) instead of failing requests.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from active_learning.serving.calibration import Calibration
from active_learning.serving.labeling import VersionClassifier
from active_learning.settings import Settings
from active_learning.store import Store
from model.classifier import ClassifierError
from model.detector import Detector

if TYPE_CHECKING:
    from active_learning.store.tables import ModelVersion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingModel:
    """What serves a project now: a model source (hub id or directory) and its ``model_version``."""

    source: str
    version: str | None
    """The registry name, or None for the starting model (its version then comes from its weights)."""
    weights_digest: str | None = None
    """What ``Detector.version_digest`` was when the version was registered; None for the starting model."""
    calibration: Calibration | None = None
    """The version's served thresholds and abstentions (``metrics["calibration"]``, from its training round);
    None for the starting model and versions without one."""
    classifier: str | None = None
    """Where the version's classifier heads are (``metrics["classifier"]["path"]``, ``labeling``); None: none."""

    @classmethod
    def of_version(cls, version: "ModelVersion", data_dir: Path) -> "ServingModel":
        metrics = version.metrics or {}
        heads = (metrics.get("classifier") or {}).get("path") if isinstance(metrics.get("classifier"), dict) else None
        return cls(resolve_model_path(data_dir, version.path), version.name, metrics.get("weights_digest"),
                   Calibration.from_metrics(metrics), resolve_model_path(data_dir, heads) if heads else None)


def resolve_model_path(data_dir: Path, path: str) -> str:
    """A registry path as this machine reads it: relative to ``data_dir`` when it is there (registered versions,
    ``models/<name>``), else as recorded (a hub id, or an absolute path from before paths were relative)."""
    candidate = Path(data_dir) / path
    return str(candidate) if not Path(path).is_absolute() and candidate.exists() else str(path)


class CheckpointError(RuntimeError):
    """A checkpoint's weights do not load, or are not the weights that were registered."""


def starting_model_version(detector: Detector) -> str:
    """``<short model name>-<12 hex of the weights>``: the same weights give the same version after a restart."""
    short_name = Path(str(detector.source).rstrip("/")).name or "model"
    return f"{short_name}-{detector.version_digest}"


def serving_model(store: Store, settings: Settings, project_id: int | None) -> ServingModel:
    deployed = store.models.deployed(project_id) if project_id is not None else None
    if deployed is not None:
        return ServingModel.of_version(deployed, settings.data_dir)
    return starting_serving(settings)


def starting_serving(settings: Settings) -> ServingModel:
    """The starting model, as it serves a project no version was deployed for."""
    return ServingModel(settings.model, None, calibration=None if settings.serve_unmeasured else UNMEASURED)


UNMEASURED = Calibration(withheld=True)
"""What the starting model serves before its measuring round when ``serve_unmeasured`` is off: no box."""


@dataclass(frozen=True)
class LoadedModel:
    """A detector in memory, the ``model_version`` its predictions carry and the version's calibration (what a
    job made for it serves: ``project_job(..., calibration=model.calibration, classifier=model.classifier)``)."""

    detector: Detector
    version: str
    calibration: Calibration | None = None
    classifier: VersionClassifier | None = None
    """The version's heads for label groups (``labeling``)."""

    @classmethod
    def load(cls, serving: ServingModel, device: str) -> "LoadedModel":
        return cls.of_detector(serving, Detector.load(serving.source, device=device))

    @classmethod
    def of_detector(cls, serving: ServingModel, detector: Detector) -> "LoadedModel":
        """``serving`` with ``detector`` loaded from its source already (a measured starting model, and a version
        that retrained only its classifier, share another version's weights)."""
        if serving.weights_digest and detector.version_digest != serving.weights_digest:
            raise CheckpointError(f"weights of {serving.version} changed on disk since they were registered "
                                  f"(digest {detector.version_digest}, registered {serving.weights_digest})")
        try:
            classifier = VersionClassifier.load(serving.classifier) if serving.classifier else None
        except ClassifierError as exc:
            raise CheckpointError(f"classifier heads of {serving.version}: {exc}") from None
        return cls(detector, serving.version or starting_model_version(detector), serving.calibration, classifier)


class ModelPool:
    """The detectors one server process holds, and for each request the one that serves its project now.

    ``model_for`` asks the store which version serves the project on every call (one indexed query), so a
    version the worker deploys serves the next request without a restart. A new version is loaded first and
    only then handed out; a request keeps the detector it got to its end, whatever the pool does meanwhile.
    Each source is loaded once; the ``settings.loaded_models`` most recently used stay in memory.
    """

    def __init__(self, settings: Settings, store: Store, starting: Detector | None = None):
        """``starting``: the starting model, when the caller has it loaded already."""
        self.settings = settings
        self.store = store
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time: two new versions' weights at once could exhaust memory
        self._starting_version: str | None = None
        self._replacements: dict[str, ServingModel] = {}  # a source that failed to load -> what serves instead
        if starting is not None:
            self._keep(_key(starting_serving(settings)), LoadedModel.of_detector(starting_serving(settings), starting))

    def model_for(self, project_id: int | None) -> LoadedModel:
        """The model serving ``project_id`` now, loaded if needed (``None``: the starting model)."""
        serving = self._serving(project_id)
        key = _key(serving)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with self._load_lock:
            with self._lock:  # another thread may have loaded it while this one waited
                if key in self._models:
                    return self._models[key]
                same_weights = next((m.detector for m in self._models.values()
                                     if m.detector.source == serving.source), None)
            try:
                if same_weights is not None:
                    return self._keep(key, LoadedModel.of_detector(serving, same_weights))
                log.info("loading %s (model_version %s) for project %s", serving.source,
                         serving.version or "from its weights", project_id)
                return self._keep(key, LoadedModel.load(serving, self.settings.device))
            except Exception as exc:  # noqa: BLE001 - a broken version must not fail its project's requests
                if serving.version is None:
                    raise  # the starting model: nothing to fall back to
                instead = self._previous(serving)
                log.error("model version %s cannot be loaded (%s); project %s is served by %s instead until "
                          "another version is deployed", serving.version, str(exc).splitlines()[0][:300],
                          project_id, instead.version or self.settings.model)
                self._replacements[key] = instead
        return self.model_for(project_id)  # each failure adds a replacement, ending at the starting model

    def version_for(self, project_id: int | None) -> str:
        """The ``model_version`` the project's next prediction carries; loads nothing but the starting model."""
        version = self._serving(project_id).version
        if version is not None:
            return version
        return self._starting_version or self.model_for(None).version

    def _serving(self, project_id: int | None) -> ServingModel:
        """What serves the project: the store's answer, unless that failed to load here before."""
        serving = serving_model(self.store, self.settings, project_id)
        while _key(serving) in self._replacements:
            serving = self._replacements[_key(serving)]
        return serving

    def _previous(self, broken: ServingModel) -> ServingModel:
        """The registry version ``broken`` was trained from, else the starting model."""
        version = self.store.models.get(broken.version)
        parent = self.store.models.get(version.parent) if version and version.parent else None
        if parent is None:
            return starting_serving(self.settings)
        return ServingModel.of_version(parent, self.settings.data_dir)

    def _keep(self, key: str, model: LoadedModel) -> LoadedModel:
        with self._lock:
            self._models[key] = model
            if key == _key(starting_serving(self.settings)):
                self._starting_version = model.version
            while len(self._models) > max(1, self.settings.loaded_models):
                evicted, _ = self._models.popitem(last=False)
                log.info("unloaded %s (least recently used)", evicted)
        return model


def _key(serving: ServingModel) -> str:
    """A version is held under its name (a measured starting model shares its source with the starting model)."""
    return serving.version or f"starting:{serving.source}"
