"""Where a model comes from: check a source before anything loads it, and copy it into a directory.

``check_model_source`` answers within a second, without torch and without transformers (on a network that drops
packets: 8 s, huggingface_hub's own 3 s lookup of agent names and our probe's 5 s): it reads the
``config.json`` of a local directory, of the Hugging Face cache or of the hub, and raises ``ModelSourceError``
(one line: the source and the reason) when the model could not load as what it is meant to be (``ModelKind``: the
Grounding DINO detector, the SAM-family segmenter, or the DINOv2 backbone of the crop classifier). Loading itself
would take much longer to say so: transformers retries an unreachable hub for about 25 s per file, then raises a
traceback. The hub is asked ONE question (a HEAD of ``config.json``, no retries, the ``HF_HUB_ETAG_TIMEOUT``
huggingface_hub uses, else ``HUB_PROBE_SECONDS``). When it cannot answer, a complete copy in the cache is no way
out by itself: ``from_pretrained`` would ask the hub, with retries, for every optional file the cache does not
know (measured: 380 s for the small model); the error says to set ``HF_HUB_OFFLINE=1``, which loads it in
seconds.

``copy_model`` loads a source exactly as the server does and saves it (model and processor) with
``save_pretrained``: the directory it writes loads on a machine that never reaches the hub.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

GROUNDING_DINO_MODEL_TYPES = ("grounding-dino",)
"""``config.json`` model types that load as ``GroundingDinoForObjectDetection`` (transformers' zero-shot detection
mapping; tests/backend/test_first_run.py keeps this in step). ``mm-grounding-dino`` maps to another class,
which neither the detector nor the training code were written or tested for."""
SEGMENTER_MODEL_TYPES = ("sam", "sam_hq", "sam2", "edgetam")
"""Box-promptable image segmenters of transformers' mask-generation mapping (``model.segmenter``); the video and
SAM 3 tracker entries of that mapping take other inputs."""
CLASSIFIER_MODEL_TYPES = ("dinov2",)
"""The frozen backbone of the crop classifier (``model.classifier.CropEncoder``: CLS and mean patch tokens)."""

HUB_PROBE_SECONDS = 5.0
"""How long the hub gets to answer the one HEAD request, unless ``HF_HUB_ETAG_TIMEOUT`` says otherwise."""

_MODEL_FILES: Sequence[tuple[str, tuple[str, ...]]] = (
    ("config.json", ("config.json",)),
    ("weights", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")),
    ("processor config", ("processor_config.json", "preprocessor_config.json")),
)
REQUIRED_FILES: Sequence[tuple[str, tuple[str, ...]]] = (*_MODEL_FILES, ("tokenizer", ("tokenizer.json", "vocab.txt")))
"""What ``Detector.load`` reads: each entry is satisfied by any one of its files."""


@dataclass(frozen=True)
class ModelKind:
    """What a source must be to load as one of groundloop's models."""

    name: str
    model_types: tuple[str, ...]
    required_files: Sequence[tuple[str, tuple[str, ...]]]


DETECTOR = ModelKind("Grounding DINO", GROUNDING_DINO_MODEL_TYPES, REQUIRED_FILES)
SEGMENTER = ModelKind("a SAM-family segmenter", SEGMENTER_MODEL_TYPES, _MODEL_FILES)
CLASSIFIER = ModelKind("a DINOv2 backbone", CLASSIFIER_MODEL_TYPES, _MODEL_FILES)


class ModelSourceError(Exception):
    """A model source that would not load; ``str()`` is one line naming the source and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot load the model {source!r}: {reason}")
        self.source = source
        self.reason = reason


def check_model_source(source: str | Path, kind: ModelKind = DETECTOR) -> None:
    """Raise ``ModelSourceError`` unless ``source`` (a ``save_pretrained`` directory or a hub id) can be loaded
    as ``kind`` from here: a directory with its files, the hub, or (``HF_HUB_OFFLINE=1``) a complete copy in the
    Hugging Face cache."""
    source = str(source)
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(source, "it is a file; a model is a save_pretrained directory")
        _check_files(source, kind, f"the directory {source}", lambda name: _existing(path / name))
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ModelSourceError(source, "no such directory (and not a hub id, which is NAME or OWNER/NAME)") from None
    _check_hub_model(source, kind)


def copy_model(source: str | Path, destination: Path, kind: ModelKind = DETECTOR) -> Path:
    """Load ``source`` as the server does and ``save_pretrained`` it (model and processor) into ``destination``,
    which must not exist; written to a sibling first and renamed, so a failed copy leaves no half directory."""
    check_model_source(source, kind)
    if destination.exists():
        raise FileExistsError(f"{destination} exists already")
    loaded = _loader(kind).load(source, device="cpu")
    partial = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        loaded.model.save_pretrained(partial)
        loaded.processor.save_pretrained(partial)
        partial.rename(destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return destination


def _loader(kind: ModelKind):
    """The class whose ``load`` reads ``kind`` as the server does; each has ``.model`` and ``.processor``."""
    if kind is SEGMENTER:
        from model.segmenter import Segmenter

        return Segmenter
    if kind is CLASSIFIER:
        from model.classifier import CropEncoder

        return CropEncoder
    from model.detector import Detector

    return Detector


def model_short_name(source: str | Path) -> str:
    """``IDEA-Research/grounding-dino-tiny`` -> ``grounding-dino-tiny``; a directory -> its name."""
    return Path(str(source).rstrip("/")).name or "model"


def _check_hub_model(repo_id: str, kind: ModelKind) -> None:
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cache = constants.HF_HUB_CACHE
    in_cache = lambda name: _existing(try_to_load_from_cache(repo_id, name))  # noqa: E731
    if constants.is_offline_mode():
        _check_files(repo_id, kind, f"the Hugging Face cache ({cache}; HF_HUB_OFFLINE is set)", in_cache,
                     lead="it is not a local directory, and", nothing="has no copy of it")
        return
    with _quiet_http():
        unreachable = _probe_hub(repo_id)
    if unreachable:
        where = f"it is not a local directory, the hub ({constants.ENDPOINT}) cannot be reached ({unreachable}), and"
        _check_files(repo_id, kind, f"the Hugging Face cache ({cache})", in_cache, lead=where,
                     nothing="has no copy of it")
        # transformers would ask the hub again for every optional file the cache does not know, for minutes
        raise ModelSourceError(repo_id, f"the hub ({constants.ENDPOINT}) cannot be reached ({unreachable}); the "
                                        f"Hugging Face cache ({cache}) has a copy: set HF_HUB_OFFLINE=1 to load it "
                                        "without asking the hub")
    try:
        with _quiet_http():
            config_file = Path(hf_hub_download(repo_id, "config.json"))
    except Exception as exc:  # noqa: BLE001 - the hub answered the probe a moment ago: say what broke, in one line
        raise ModelSourceError(repo_id, f"downloading its config.json failed ({_one_line(exc)})") from exc
    _check_architecture(repo_id, kind, config_file)


def _probe_hub(repo_id: str) -> str | None:
    """Ask the hub for ``config.json`` once: None if it answered, else why it could not be reached; a missing,
    gated or fileless repository raises ``ModelSourceError``."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    timeout = HUB_PROBE_SECONDS
    if constants.HF_HUB_ETAG_TIMEOUT != constants.DEFAULT_ETAG_TIMEOUT:  # as hf_hub_download honours it
        timeout = constants.HF_HUB_ETAG_TIMEOUT
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=timeout, retry_on_errors=False)
    except GatedRepoError:
        raise ModelSourceError(repo_id, "the model is gated on the hub: accept its terms on its page and log in "
                                        "(hf auth login, or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelSourceError(repo_id, f"no such directory, and no such model on the hub ({constants.ENDPOINT}) "
                                        "(private models need hf auth login, or HF_TOKEN)") from None
    except RemoteEntryNotFoundError:
        raise ModelSourceError(repo_id, "the hub repository has no config.json: it is not a transformers "
                                        "model") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 404:
            raise ModelSourceError(repo_id, f"no such directory, and no such model on the hub ({constants.ENDPOINT}):"
                                            " HTTP 404") from None
        if status is not None and status < 500 and status != 429:
            raise ModelSourceError(repo_id, f"the hub ({constants.ENDPOINT}) answered HTTP {status}") from None
        return f"HTTP {status}"
    except Exception as exc:  # noqa: BLE001 - httpx's network errors, timeouts, proxies: all mean "not reachable"
        return _one_line(f"{type(exc).__name__}: {exc}")
    return None


def _check_files(source: str, kind: ModelKind, where: str, has: Callable[[str], Path | None], lead: str = "",
                 nothing: str = "holds no model files") -> None:
    """``where`` holds a config of ``kind`` and every one of its required files (``has(name)``: its path or
    None). The architecture goes first: a model of another kind lacks the processor too, but that is not news."""
    missing = [what for what, names in kind.required_files if not any(has(name) for name in names)]
    if len(missing) == len(kind.required_files):
        raise ModelSourceError(source, f"{lead} {where} {nothing}".strip())
    config_file = has("config.json")
    if config_file is not None:
        _check_architecture(source, kind, config_file)
    if missing:
        raise ModelSourceError(source, f"{lead} {where} lacks its {', '.join(missing)}".strip())


def _check_architecture(source: str, kind: ModelKind, config_file: Path) -> None:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelSourceError(source, f"{config_file} is not a readable JSON config ({_one_line(exc)})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in kind.model_types:
        found = f"a {model_type!r} model" if model_type else "a config without a model_type"
        raise ModelSourceError(source, f"it is {found}, not {kind.name} (model_type "
                               f"{' or '.join(map(repr, kind.model_types))})")


@contextlib.contextmanager
def _quiet_http() -> Iterator[None]:
    """httpx logs every request at INFO; the check's requests show at DEBUG only (its message says the rest)."""
    logger = logging.getLogger("httpx2")
    level = logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _existing(path: str | os.PathLike | object) -> Path | None:
    """``path`` if it names a file (``try_to_load_from_cache`` also answers None or a 'known missing' marker)."""
    return Path(path) if isinstance(path, (str, os.PathLike)) and Path(path).is_file() else None


def _one_line(error: object) -> str:
    return " ".join(str(error).split())[:200]
