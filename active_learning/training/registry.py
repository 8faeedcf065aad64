"""The model registry: fine-tuned versions on disk and in the database, and how the deployed one changes.

Each fine-tuned version is a ``save_pretrained`` directory ``<data dir>/models/<version>``, moved there in one
rename once complete, and a ``model_versions`` row whose path is relative to the data dir (``models/<version>``),
so that every machine mounting the shared data dir where it likes loads the versions another one registered
(``pool.ServingModel.of_version`` resolves it). A checkpoint is registered only if it loads, and its weights
digest is recorded (``metrics["weights_digest"]``). Deploying a version retires the one before; ``rollback``
deploys any earlier version again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from active_learning.serving.pool import CheckpointError, resolve_model_path
from active_learning.settings import Settings
from active_learning.store import Store
from model.detector import Detector


def checkpoint_name(project_id: int, run_id: int) -> str:
    """Run ids are unique in the database, so this names one fine-tuned version for good."""
    return f"groundloop-p{project_id}-r{run_id}"


def register(store: Store, settings: Settings, checkpoint: Path, name: str, *, project_id: int,
             parent: str | None, metrics: dict, deploy: bool) -> Path:
    """Check that a finished checkpoint loads, move it into the registry, then record it (deployed or rejected).

    A checkpoint that does not load raises ``CheckpointError`` and is never recorded. The directory move comes
    before the row and is one rename: a crash before the row is written leaves an unused directory, never a row
    pointing at missing or half-written weights.
    """
    try:
        digest = Detector.load(checkpoint, device="cpu").version_digest
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises for truncated or corrupt files
        raise CheckpointError(f"checkpoint {name} does not load: {str(exc).splitlines()[0][:300]}") from None
    metrics = {**metrics, "weights_digest": digest}
    target = settings.models_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(checkpoint, target)
    store.models.add(name, target.relative_to(settings.data_dir), project_id=project_id, parent=parent,
                     metrics=metrics, status="deployed" if deploy else "rejected")
    return target


def rollback(store: Store, settings: Settings, project_id: int, name: str) -> None:
    """Deploy an earlier version of the project again (the current one is retired)."""
    version = store.models.get(name)
    if version is None or version.project_id != project_id:
        known = ", ".join(v.name for v in store.models.versions(project_id)) or "none"
        raise ValueError(f"project {project_id} has no model version {name!r} (known: {known})")
    path = resolve_model_path(settings.data_dir, version.path)
    if Path(path).is_absolute() and not (Path(path) / "config.json").exists():  # (a hub id: the starting
        # model's weights, measured)
        raise ValueError(f"model version {name!r} has no weights at {path}")
    store.models.set_status(name, "deployed")
