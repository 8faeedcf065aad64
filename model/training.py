"""Fine-tuning Grounding DINO on labeled boxes, keeping the epoch with the best validation mAP.

Pieces, in the spirit of torchvision's detection references: ``TrainingExample`` (an image and its boxes),
``make_batches`` (one prompt per batch: transformers 5.23's loss offsets image i's label map by the phrase
count of image i alone, which is only right when every image of a batch shares one prompt), ``augment``
(box-safe flip and scale jitter), ``train_one_epoch`` and ``fit`` (epochs, per-epoch evaluation, best and last
checkpoint, early stopping). Device placement and mixed precision come from accelerate.

On N processes (``active_learning.training.distributed`` launches them) the same ``fit`` runs in each: every
process trains on its share of the batches (``_share_of``), DDP all-reduces the gradients, and the main process
alone evaluates, writes checkpoints and reports each epoch; it tells the others when to stop early
(``_main_says_stop``).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import supervision as sv
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, broadcast_object_list, set_seed
from PIL import Image, ImageOps
from tqdm.auto import tqdm
from transformers import get_scheduler

from model.config import EVAL_SETTINGS, DetectionSettings, TrainingConfig
from model.detector import Detector
from model.evaluation import DetectionMetrics, evaluate_detections
from model.prompts import ClassSpec, Prompt, build_prompts

log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = timedelta(minutes=30)
"""How long a process waits for the others at a collective (the gradient all-reduce, the early-stop broadcast):
longer than the main process's evaluation of an epoch, short enough that a process stuck for good ends the round.
A process that crashes ends it at once (the launcher stops the others)."""
DISTRIBUTED_OPTIONS = [InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT),
                       DistributedDataParallelKwargs(find_unused_parameters=True)]
"""Only used on N processes. Unused parameters: Grounding DINO's loss leaves some trainable weights without a
gradient (ten on the small model), and DDP fails at the second step unless told to expect that."""


@dataclass
class TrainingExample:
    """One labeled image: ``targets`` holds pixel xyxy boxes with ``class_id`` indexing the project's classes.

    An image without boxes is a valid negative: it teaches the model what is not an object.
    """

    image: Image.Image
    targets: sv.Detections


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    metrics: DetectionMetrics
    seconds: float
    learning_rate: float = 0.0
    """The rate at the epoch's end (warm-up, then decay: ``TrainingConfig.lr_schedule``)."""


@dataclass
class FitResult:
    epochs: list[EpochResult] = field(default_factory=list)
    best_epoch: int | None = None
    best_dir: Path | None = None
    last_dir: Path | None = None

    @property
    def best_map(self) -> float:
        return max((e.metrics.map for e in self.epochs), default=0.0)


# --- data --------------------------------------------------------------------------------------------


def augment(example: TrainingExample, rng: random.Random, hflip_probability: float) -> TrainingExample:
    """A horizontal flip that moves the boxes with the image (vertical flips would break 'left'/'up' prompts)."""
    if rng.random() >= hflip_probability:
        return example
    width = example.image.width
    xyxy = np.asarray(example.targets.xyxy, dtype=float).reshape(-1, 4).copy()
    xyxy[:, [0, 2]] = width - xyxy[:, [2, 0]]
    targets = sv.Detections(xyxy=xyxy, class_id=np.asarray(example.targets.class_id, dtype=int).reshape(-1))
    return TrainingExample(ImageOps.mirror(example.image), targets)


@dataclass
class Batch:
    prompt: Prompt
    examples: list[TrainingExample]
    phrase_of_class: dict[int, int]
    """Class index -> index of its name's phrase in ``prompt`` (what the loss calls ``class_labels``)."""


def _phrase_of_class(prompt: Prompt) -> dict[int, int]:
    first: dict[int, int] = {}
    for phrase_index, class_index in enumerate(prompt.phrase_classes):
        first.setdefault(class_index, phrase_index)
    return first


def make_batches(examples: Sequence[TrainingExample], prompts: Sequence[Prompt], batch_size: int,
                 rng: random.Random) -> list[Batch]:
    """Shuffled batches in which every image shares ONE prompt.

    With several prompts (many classes), each image appears once per prompt with only the boxes of that
    prompt's classes, so every box is learned once and the other classes are simply not asked about.
    """
    batches = []
    for prompt in prompts:
        phrase_of_class = _phrase_of_class(prompt)
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chunk = []
            for i in order[start:start + batch_size]:
                example = examples[i]
                keep = np.isin(np.asarray(example.targets.class_id).reshape(-1), list(phrase_of_class))
                chunk.append(TrainingExample(example.image, example.targets[keep]))
            batches.append(Batch(prompt, chunk, phrase_of_class))
    rng.shuffle(batches)
    return batches


def encode_batch(batch: Batch, processor, shortest_edge: int, device: torch.device) -> dict:
    """Model inputs and loss targets (normalized cx, cy, w, h and phrase indices) for one batch."""
    images = [example.image for example in batch.examples]
    size = {"shortest_edge": shortest_edge, "longest_edge": int(shortest_edge * 1333 / 800)}
    pixels = processor.image_processor(images=images, size=size, return_tensors="pt")
    input_ids = torch.tensor([batch.prompt.input_ids] * len(images))
    text = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "token_type_ids": torch.zeros_like(input_ids)}
    labels = []
    for example in batch.examples:
        width, height = example.image.size
        xyxy = torch.as_tensor(np.asarray(example.targets.xyxy, dtype=np.float32).reshape(-1, 4))
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        xyxy = (xyxy / scale).clamp(0, 1)
        cxcywh = torch.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                              xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], dim=1)
        phrases = [batch.phrase_of_class[int(c)] for c in np.asarray(example.targets.class_id).reshape(-1)]
        labels.append({"class_labels": torch.tensor(phrases, dtype=torch.long, device=device),
                       "boxes": cxcywh.to(device)})
    inputs = {key: value.to(device) for key, value in {**pixels, **text}.items()}
    return {**inputs, "labels": labels}


# --- training ----------------------------------------------------------------------------------------


def freeze(model, *, backbone: bool, text_encoder: bool) -> int:
    """Freeze the Swin image backbone and/or the BERT text encoder; returns the number of trainable weights."""
    core = model.model
    for module, frozen in ((core.backbone, backbone), (core.text_backbone, text_encoder)):
        for parameter in module.parameters():
            parameter.requires_grad_(not frozen)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_one_epoch(model, processor, batches: Sequence[Batch], optimizer, scheduler, accelerator: Accelerator,
                    base_size: int, config: TrainingConfig, rng: random.Random, epoch: int) -> float:
    model.train()
    losses = []
    # A bar only on a terminal: in a log file its updates would be thousands of lines (fit logs each epoch).
    progress = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False,
                    disable=not (accelerator.is_local_main_process and sys.stderr.isatty()))
    for step, batch in enumerate(progress, 1):
        jitter = rng.uniform(1 - config.scale_jitter, 1 + config.scale_jitter)
        batch = Batch(batch.prompt, [augment(e, rng, config.hflip_probability) for e in batch.examples],
                      batch.phrase_of_class)
        inputs = encode_batch(batch, processor, max(32, int(base_size * jitter)), accelerator.device)
        with accelerator.autocast():
            loss = model(**inputs).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch} step {step}")
        optimizer.zero_grad()
        accelerator.backward(loss)
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}")
        log.debug("epoch %d step %d/%d loss %.4f", epoch, step, len(batches), loss.item())
    return float(np.mean(losses)) if losses else math.nan


def evaluate(detector: Detector, examples: Sequence[TrainingExample], classes: Sequence[ClassSpec],
             settings: DetectionSettings = EVAL_SETTINGS, batch_size: int = 4) -> DetectionMetrics:
    """Validation metrics of ``detector`` on ``examples`` with the same detect() users are served by."""
    predictions: list[sv.Detections] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        predictions.extend(detector.detect([e.image for e in chunk], classes, settings))
    return evaluate_detections([e.targets for e in examples], predictions,
                               [e.image.size for e in examples], [c.name for c in classes])


def _share_of(batches: list[Batch], accelerator: Accelerator) -> list[Batch]:
    """This process's batches of the epoch: every process gets as many (the first ones repeat to fill the last
    round), since each DDP step waits for all processes' gradients. One process: all of them."""
    count = accelerator.num_processes
    if count == 1 or not batches:
        return batches
    padded = [batches[i % len(batches)] for i in range(count * math.ceil(len(batches) / count))]
    return padded[accelerator.process_index::count]


def _main_says_stop(accelerator: Accelerator, stop: bool) -> bool:
    """The main process's early-stopping decision, on every process (it alone evaluates)."""
    if accelerator.num_processes == 1:
        return stop
    return bool(broadcast_object_list([stop], from_process=0)[0])


def _mean_over_processes(accelerator: Accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="mean").item()


def _save_atomically(model, processor, target: Path) -> Path:
    """Write to a sibling temp dir, then rename over ``target``: a crash never leaves a half checkpoint there."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    if target.exists():
        retired = target.with_name(f".{target.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(target)
    return target


def fit(detector: Detector, train: Sequence[TrainingExample], validation: Sequence[TrainingExample],
        classes: Sequence[ClassSpec], output_dir: Path, config: TrainingConfig = TrainingConfig(),
        eval_settings: DetectionSettings = EVAL_SETTINGS,
        on_epoch_end: Callable[[EpochResult], None] | None = None) -> FitResult:
    """Fine-tune ``detector``'s model in place; write ``best/`` (highest validation mAP) and ``last/``.

    Early stopping ends training after ``config.patience`` epochs without a better mAP. Run by each of N
    processes, only the main one evaluates, saves and calls ``on_epoch_end`` (the others may pass no
    ``validation``); the others return an empty ``FitResult``.
    """
    set_seed(config.seed)
    cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    precision = "no" if cpu else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, kwargs_handlers=DISTRIBUTED_OPTIONS)
    main = accelerator.is_main_process
    rng = random.Random(config.seed)  # the batches' order: the same on every process, each takes its share
    augment_rng = rng if accelerator.num_processes == 1 else random.Random(config.seed + 1 + accelerator.process_index)
    model, processor = detector.model, detector.processor
    trainable = freeze(model, backbone=config.freeze_backbone, text_encoder=config.freeze_text_encoder)
    log.info("fine-tuning %d trainable weights on %d images (%d for validation), device %s, lr %.2g (%s after "
             "%.0f %% warm-up), process %d of %d", trainable, len(train), len(validation), accelerator.device,
             config.learning_rate, config.lr_schedule, 100 * config.warmup_fraction, accelerator.process_index,
             accelerator.num_processes)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.learning_rate, weight_decay=config.weight_decay)
    prompts = build_prompts(classes, processor.tokenizer, model.config.max_text_len)
    epoch_batches = sum(math.ceil(len(train) / config.batch_size) for _ in prompts)
    # Counted over all processes: accelerate steps the scheduler once per process at each step.
    planned_steps = config.epochs * accelerator.num_processes * math.ceil(epoch_batches / accelerator.num_processes)
    scheduler = get_scheduler("constant_with_warmup" if config.lr_schedule == "constant" else config.lr_schedule,
                              optimizer, num_warmup_steps=round(config.warmup_fraction * planned_steps),
                              num_training_steps=planned_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    base_size = eval_settings.image_size or processor.image_processor.size["shortest_edge"]

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result = FitResult()
    since_best = 0
    for epoch in range(1, config.epochs + 1):
        started = time.monotonic()
        batches = _share_of(make_batches(train, prompts, config.batch_size, rng), accelerator)
        loss = train_one_epoch(model, processor, batches, optimizer, scheduler, accelerator, base_size, config,
                               augment_rng, epoch)
        if accelerator.num_processes > 1:
            log.info("process %d of %d: epoch %d trained on %d batches, loss %.4f", accelerator.process_index,
                     accelerator.num_processes, epoch, len(batches), loss)
            loss = _mean_over_processes(accelerator, loss)
        if not main:
            if _main_says_stop(accelerator, False):
                break
            continue
        model.eval()
        metrics = evaluate(detector, validation, classes, eval_settings)
        epoch_result = EpochResult(epoch, loss, metrics, time.monotonic() - started, scheduler.get_last_lr()[0])
        result.epochs.append(epoch_result)
        unwrapped = accelerator.unwrap_model(model)
        improved = result.best_epoch is None or metrics.map > result.epochs[result.best_epoch - 1].metrics.map
        log.info("epoch %d/%d: loss %.4f, val mAP %.4f, mAP@.5 %.4f%s (%.1f s)", epoch, config.epochs, loss,
                 metrics.map, metrics.map50, " (best)" if improved else "", epoch_result.seconds)
        if improved:
            result.best_epoch, since_best = epoch, 0
            result.best_dir = _save_atomically(unwrapped, processor, output_dir / "best")
        else:
            since_best += 1
        if on_epoch_end:
            on_epoch_end(epoch_result)
        if _main_says_stop(accelerator, since_best >= config.patience):
            log.info("early stop: %d epochs without a better validation mAP", since_best)
            break
    if main:
        result.last_dir = _save_atomically(accelerator.unwrap_model(model), processor, output_dir / "last")
    return result

