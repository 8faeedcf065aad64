"""Models every version of a project serves alike (the segmenter, the crop classifier's backbone): one per source
and device in a process, loaded the first time a job needs it, so a deployment that never needs one never loads it.

A model that cannot load fails the tasks that need it with one line saying which, why and what to do, and is not
tried again for ``RETRY_SECONDS`` (each try may cost the hub probe's seconds).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Generic, TypeVar

if TYPE_CHECKING:
    import torch

    from model.sources import ModelKind

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0

Model = TypeVar("Model")


class ModelUnavailable(RuntimeError):
    """A shared model cannot be loaded; the message says which, why and what to do."""


class SharedModels(Generic[Model]):
    def __init__(self, kind: "ModelKind", load: Callable[[str, str], Model], needed_for: str, way_out: str):
        """``load(source, device)``; ``needed_for`` ("no masks") and ``way_out`` (the setting to change) make the
        failure's line."""
        self.kind, self.load, self.needed_for, self.way_out = kind, load, needed_for, way_out
        self._loaded: dict[tuple[str, str], Model] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def get(self, source: str, device: "torch.device | str") -> Model:
        """The process's model for ``source`` on ``device`` (the detector's: the same device rules)."""
        from model.sources import check_model_source

        key = (source, str(device))
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < RETRY_SECONDS:
                raise ModelUnavailable(failed[1])
            try:
                check_model_source(source, self.kind)
                log.info("loading %s %s on %s", self.kind.name, source, device)
                self._loaded[key] = self.load(source, str(device))
            except Exception as exc:  # noqa: BLE001 - a hub id, a directory, a broken checkpoint: one line for all
                reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                message = f"{self.needed_for}: {reason} ({self.way_out}; groundloop copy-models copies one)"
                self._failed[key] = (time.monotonic(), message)
                log.error("%s %s: %s", self.kind.name, source, message)
                raise ModelUnavailable(message) from None
            return self._loaded[key]
