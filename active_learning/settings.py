"""The one typed place for groundloop's configuration.

Every setting has a default, an environment variable (Label Studio's own names where they exist) and a
CLI flag of the same name (``--box-threshold`` for ``box_threshold``); ``backend.cli`` maps flags onto it.
Precedence: CLI flag > environment > default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from active_learning.video.config import TrackingSettings
from model.config import EVAL_SETTINGS, DetectionSettings, TrainingConfig

if TYPE_CHECKING:
    from active_learning.reports.corrections import ActionCosts

DEFAULT_MODEL = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SEGMENTER = "facebook/sam-vit-base"
DEFAULT_CLASSIFIER_BACKBONE = "facebook/dinov2-small"


LR_SCHEDULES = ("cosine", "linear", "constant")


def _env_name(name: str) -> str:
    return ENV_NAMES.get(name, f"GROUNDLOOP_{name.upper()}")


@dataclass(frozen=True)
class Settings:
    # --- where things live -------------------------------------------------------------------------
    data_dir: Path = Path("data")
    """Root of everything groundloop writes: database, image cache, model registry, reports."""
    database_url: str = ""
    """SQLAlchemy URL; empty means ``sqlite:///<data_dir>/groundloop.db``."""

    # --- model -------------------------------------------------------------------------------------
    model: str = DEFAULT_MODEL
    """Hugging Face hub id or a local ``save_pretrained`` directory of the STARTING model."""
    segmenter: str = DEFAULT_SEGMENTER
    """Hub id or ``save_pretrained`` directory of the box-promptable SAM-family model (SAM, SAM-HQ, SAM 2, EdgeTAM)
    that turns boxes into masks; loaded only when a project's config has brush or polygon labels."""
    classifier_backbone: str = DEFAULT_CLASSIFIER_BACKBONE
    """Hub id or ``save_pretrained`` directory of the DINOv2 backbone whose frozen crop features the classifier of
    labels sharing a phrase (``predicted_values``) is trained on; loaded only for a project with such labels."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    box_threshold: float = DetectionSettings.box_threshold
    text_threshold: float = DetectionSettings.text_threshold
    nms_iou: float = DetectionSettings.nms_iou
    max_detections: int = DetectionSettings.max_detections
    image_size: int = DetectionSettings.image_size
    """Shortest edge the image is resized to before the model; 0 keeps the processor's default (800)."""
    slice_size: int = DetectionSettings.slice_size
    """Sliced inference for small objects in large images: the model also looks at overlapping tiles of this many
    pixels of the original image (besides the whole image); 0: off. A control's ``slice_size`` attribute wins."""
    slice_overlap: float = DetectionSettings.slice_overlap
    """Share of a tile's side that neighbouring tiles overlap, in [0, 1)."""
    cpu_precision: str = DetectionSettings.cpu_precision
    """The detector's forward pass on a CPU: ``auto`` (bfloat16 autocast where the CPU has bfloat16 instructions,
    avx512_bf16 or amx_bf16: 0.62x the fp32 time, held-out mAP within 0.003, bench/results/cpu_options.md; fp32
    elsewhere), ``bf16`` or ``fp32``. A GPU always runs under bf16/fp16 autocast."""
    video_stride: int = TrackingSettings.stride
    """Videos: detect every ``video_stride``-th frame (Label Studio's frames); Label Studio interpolates between."""
    video_lost_seconds: float = TrackingSettings.lost_seconds
    """Videos: how long a track may go unmatched and still continue when its object is found again."""
    video_min_keyframes: int = TrackingSettings.min_keyframes
    """Videos: tracks matched in fewer detected frames are dropped (flickers)."""
    video_match_iou: float = TrackingSettings.match_iou
    """Videos: IoU a detection needs with a track's predicted box to continue it (ByteTrack)."""
    video_max_frames: int = TrackingSettings.max_frames
    """Videos: frames detected per video at most; a longer video is detected at a larger stride."""
    video_train_frames: int = 32
    """Videos: training images per annotated video at most (frames along its tracks, every ``video_stride``-th)."""
    loaded_models: int = 3
    """Model versions a server process keeps in memory (serving different projects); least recently used go."""

    # --- Label Studio --------------------------------------------------------------------------------
    label_studio_url: str = ""
    label_studio_api_key: str = ""
    """Legacy token or personal access token (a JWT refresh token)."""
    allowed_image_hosts: tuple[str, ...] = ()
    """Hosts absolute image URLs may come from: ``host`` (its default port), ``host:port``, or ``*.example.com``;
    empty means Label Studio's origin alone."""
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 100_000_000
    image_timeout: float = 10.0
    max_video_bytes: int = 2 * 1024**3
    """Videos larger than this are refused; a video is streamed to disk (``video_cache_dir``), never held in memory."""
    video_timeout: float = 600.0
    """Wall-clock seconds for one video download (resolving, connecting, redirects and body), like ``image_timeout``."""

    # --- server --------------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = 9090
    workers: int = 1
    threads: int = 4
    basic_auth_user: str = ""
    basic_auth_pass: str = ""
    predict_budget_seconds: float = 80.0
    """Wall-clock budget for one /predict call (Label Studio gives up after 100 s)."""
    max_pending_predicts: int = 3
    """/predict calls a server process works on at once (at most ``threads`` - 1, so webhooks and /health always find
    a thread); one more is answered 503 with Retry-After at once instead of waiting behind them."""
    predict_batch_size: int = 1
    """Images per detect() call when predicting many tasks (same-shape images share a forward pass): a GPU wants
    4-8; on a 2-core CPU batches of 4 gave the full-size model nothing (0.44 against 0.43 images/s) and a small
    model 2.2x (bench/results/throughput.md). Each image of a batch is held decoded until the batch is done."""
    prefetch_images: int = 2
    """Images fetched and decoded ahead of the model, overlapping its forward pass; 0: each image is fetched only
    when the model is free. A process holds at most ``predict_batch_size + prefetch_images`` decoded images."""
    max_request_bytes: int = 64 * 1024 * 1024
    """Largest request body accepted; a larger one is answered 413."""
    webhook_secret: str = ""
    """When set, /webhook accepts only requests carrying it in the X-Groundloop-Webhook-Secret header."""
    log_level: str = "INFO"

    # --- training loop -------------------------------------------------------------------------------
    train_min_new_annotations: int = 10
    train_min_interval_minutes: float = 30.0
    epochs: int = TrainingConfig.epochs
    batch_size: int = TrainingConfig.batch_size
    learning_rate: float = TrainingConfig.learning_rate
    refine_lr_factor: float = 1.0
    """A round whose parent is already a fine-tuned version trains at ``learning_rate`` times this (0.5 was
    measured in the demo: no better; bench/demo/time_saved.md)."""
    lr_schedule: str = TrainingConfig.lr_schedule
    """``cosine``, ``linear`` or ``constant``, after ``warmup_fraction`` of the steps of warm-up."""
    warmup_fraction: float = TrainingConfig.warmup_fraction
    weight_decay: float = TrainingConfig.weight_decay
    patience: int = TrainingConfig.patience
    promotion_margin: float = 0.0
    ap_drop_margin: float = 0.05
    """A class whose validation AP falls by more than this from the deployed model's is reported as forgotten."""
    val_fraction: float = 0.2
    val_min: int = 2
    measure_min_annotations: int = 5
    """After this many annotations the worker measures the starting model on the project (no training): its
    prompt choice and thresholds tuned on every labeled image, deployed as a version of the same weights; 0: never."""
    serve_unmeasured: bool = True
    """The starting model serves boxes before it is measured on the project; false: none until the measuring
    round (the backend then never serves boxes it has not seen save time)."""
    freeze_backbone: bool = TrainingConfig.freeze_backbone
    freeze_text_encoder: bool = TrainingConfig.freeze_text_encoder
    seed: int = TrainingConfig.seed
    classifier_min_new_annotations: int = 4
    """A project with labels sharing a phrase retrains its classifier heads alone (in seconds, no detector round)
    once this many annotations arrived or changed since its last round; 0: only in detector rounds."""
    lease_seconds: float = 120.0
    """A training run's lease, renewed every third of it; a run whose worker died is failed once it expires."""

    # --- annotator effort ----------------------------------------------------------------------------
    # Seconds one annotator action takes, for the time-saved estimate (active_learning/reports/corrections.py).
    cost_draw_seconds: float = 7.0
    """Drawing a box with its label from scratch (extreme clicking, Papadopoulos et al. 2017: 7 s)."""
    cost_verify_seconds: float = 1.6
    """Checking a correct pre-annotated box and leaving it (box verification, Papadopoulos et al. 2016: 1.6 s)."""
    cost_adjust_seconds: float = 3.5
    """Fixing a pre-annotated box on the right object with the right label (dragging its edges): a moved box."""
    cost_relabel_seconds: float = 2.0
    """Giving a pre-annotated box on the right object another label."""
    cost_delete_seconds: float = 1.5
    """Removing a pre-annotated box that matches no object."""

    # --- derived -------------------------------------------------------------------------------------
    def __post_init__(self):
        self.detection_settings()  # a bad slice size or CPU precision is refused at once, not at the first image

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'groundloop.db').resolve()}"

    @property
    def image_cache_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def video_cache_dir(self) -> Path:
        """Task videos, one file per URL (``active_learning.video.cache``): OpenCV reads a video by its path."""
        return self.data_dir / "videos"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def classifiers_dir(self) -> Path:
        """Each version's classifier heads, ``<version>/`` (beside, not in, the weights: a version may share its
        weights with another one)."""
        return self.data_dir / "classifiers"

    @property
    def features_dir(self) -> Path:
        """Crop features cached per backbone and image, so retraining heads costs no backbone pass."""
        return self.data_dir / "features"

    def detection_settings(self, box_threshold: float | None = None,
                           slice_size: int | None = None) -> DetectionSettings:
        """What the detector is asked for when serving; ``box_threshold`` and ``slice_size`` override ours (a
        control's own)."""
        return DetectionSettings(
            box_threshold=self.box_threshold if box_threshold is None else box_threshold,
            text_threshold=self.text_threshold, nms_iou=self.nms_iou, max_detections=self.max_detections,
            image_size=self.image_size, slice_size=self.slice_size if slice_size is None else slice_size,
            slice_overlap=self.slice_overlap, cpu_precision=self.cpu_precision,
        )

    def tracking_settings(self) -> TrackingSettings:
        """How videos are sampled and tracked when serving."""
        return TrackingSettings(stride=self.video_stride, lost_seconds=self.video_lost_seconds,
                                min_keyframes=self.video_min_keyframes, match_iou=self.video_match_iou,
                                max_frames=self.video_max_frames)

    def evaluation_settings(self) -> DetectionSettings:
        """Detection for mAP: every candidate down to a low score counts (mAP ranks them), the rest as served."""
        return dataclasses.replace(EVAL_SETTINGS, nms_iou=self.nms_iou, max_detections=self.max_detections,
                                   image_size=self.image_size, cpu_precision=self.cpu_precision)

    def training_config(self, refining: bool = False) -> TrainingConfig:
        """``refining``: the round starts from a fine-tuned version (``refine_lr_factor`` applies)."""
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
        return TrainingConfig(
            epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate * (self.refine_lr_factor if refining else 1.0),
            lr_schedule=self.lr_schedule, warmup_fraction=self.warmup_fraction,
            weight_decay=self.weight_decay, patience=self.patience, freeze_backbone=self.freeze_backbone,
            freeze_text_encoder=self.freeze_text_encoder, seed=self.seed, device=self.device,
        )

    def action_costs(self) -> "ActionCosts":
        """The per-action seconds above, for ``estimate_effort`` and the correction statistics."""
        from active_learning.reports.corrections import ActionCosts

        return ActionCosts(draw=self.cost_draw_seconds, verify=self.cost_verify_seconds,
                           adjust=self.cost_adjust_seconds, relabel=self.cost_relabel_seconds,
                           delete=self.cost_delete_seconds)

    # --- construction --------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then the environment, then ``overrides`` (CLI flags; None means 'not given')."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(_env_name(f.name))
            if raw is not None and raw != "":
                values[f.name] = _parse(f.type, raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not isinstance(values.get("data_dir", Path()), Path):
            values["data_dir"] = Path(values["data_dir"])
        if isinstance(values.get("allowed_image_hosts"), str):
            values["allowed_image_hosts"] = _parse("tuple", values["allowed_image_hosts"], "allowed_image_hosts")
        return cls(**values)


ENV_NAMES = {
    "label_studio_url": "LABEL_STUDIO_URL",
    "label_studio_api_key": "LABEL_STUDIO_API_KEY",
    "basic_auth_user": "BASIC_AUTH_USER",
    "basic_auth_pass": "BASIC_AUTH_PASS",
    "database_url": "DATABASE_URL",
    "model": "GROUNDLOOP_MODEL",
    "log_level": "LOG_LEVEL",
}


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name`` (for docs and the CLI's help)."""
    return _env_name(field_name)


def _parse(type_name: Any, raw: str, name: str) -> Any:
    kind = str(type_name)
    try:
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{_env_name(name)}={raw!r} is not a valid {kind}") from None
    return raw
