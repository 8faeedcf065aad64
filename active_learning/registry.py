"""The model registry: which weights serve a project, where they live, and how versions change.

Each fine-tuned version is a ``save_pretrained`` directory ``<data dir>/models/<version>``, moved there in one
rename once complete, and a ``model_versions`` row. A project without a deployed version is served by the
starting model (``Settings.model``: a hub id or a directory). Deploying a version retires the one before;
``rollback`` deploys any earlier version again.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from active_learning.settings import Settings
from active_learning.store import Store
from model import Detector


@dataclass(frozen=True)
class ServingModel:
    """What serves a project now: a model source (hub id or directory) and its ``model_version``."""

    source: str
    version: str | None
    """The registry name, or None for the starting model (its version then comes from its weights)."""


def starting_model_version(detector: Detector) -> str:
    """``<short model name>-<12 hex of the weights>``: the same weights give the same version after a restart."""
    short_name = Path(str(detector.source).rstrip("/")).name or "model"
    return f"{short_name}-{detector.version_digest}"


def serving_model(store: Store, settings: Settings, project_id: int | None) -> ServingModel:
    deployed = store.deployed_model(project_id) if project_id is not None else None
    if deployed is not None:
        return ServingModel(deployed.path, deployed.name)
    return ServingModel(settings.model, None)


def checkpoint_name(project_id: int, run_id: int) -> str:
    """Run ids are unique in the database, so this names one fine-tuned version for good."""
    return f"groundloop-p{project_id}-r{run_id}"


def register(store: Store, settings: Settings, checkpoint: Path, name: str, *, project_id: int,
             parent: str | None, metrics: dict, deploy: bool) -> Path:
    """Move a finished checkpoint into the registry, then record it (deployed or rejected).

    The directory move comes first and is one rename: a crash before the row is written leaves an unused
    directory, never a row pointing at missing or half-written weights.
    """
    target = settings.models_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(checkpoint, target)
    store.add_model_version(name, target, project_id=project_id, parent=parent, metrics=metrics,
                            status="deployed" if deploy else "rejected")
    return target


def rollback(store: Store, project_id: int, name: str) -> None:
    """Deploy an earlier version of the project again (the current one is retired)."""
    version = store.get_model_version(name)
    if version is None or version.project_id != project_id:
        known = ", ".join(v.name for v in store.model_versions(project_id)) or "none"
        raise ValueError(f"project {project_id} has no model version {name!r} (known: {known})")
    if not (Path(version.path) / "config.json").exists():
        raise ValueError(f"model version {name!r} has no weights at {version.path}")
    store.set_model_status(name, "deployed")
