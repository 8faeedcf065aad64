"""A project's training data from the store: its humans' latest boxes on cached images, split for good.

A brush or polygon annotation trains the detector through its mask's bounding box (the stored ``"box"``); the
regions of the project's smart tools are prompts for the segmenter, not labels, and are left out. A box of a label
in a label group trains the detector as the group's phrase (``ProjectSchema.detection_class``); its label trains
the group's classifier head (``label_heads``).

A video task (a ``<Video>`` project) gives several training images: frames sampled along its human tracks (every
``video_stride``-th frame where an object is shown, at most ``video_train_frames``), each with the boxes Label
Studio shows there (keyframes interpolated, ``VideoTrack.box_at``); the frames are written to the image cache, so
training reads them as files like any image. The split is by task, so the frames of one video never straddle
training and validation.

The split decides, from a hash of the task id alone, whether a task validates or trains, so every round of a
project validates on the same tasks (scores of different rounds compare) and no task a model trained on is
later used to judge it. Rule: a task validates if its hash value u (in [0, 1)) is below ``val_fraction``, or if
it is among the ``val_min`` tasks of the project with the smallest u. A task that trains now can never move to
validation later: new tasks only push existing ones further from the smallest-u set.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import supervision as sv

from active_learning.images import ImageCache, ImageError
from active_learning.store import LabeledTask, Store
from model import ClassSpec
from model.training import TrainingExample

if TYPE_CHECKING:
    from active_learning.labelstudio.config import ProjectSchema

log = logging.getLogger(__name__)


def split_value(task_id: int) -> float:
    """A task's fixed place in [0, 1): the first 8 bytes of sha256 of its id."""
    digest = hashlib.sha256(f"task:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def validation_ids(task_ids: Sequence[int], val_fraction: float, val_min: int) -> set[int]:
    ranked = sorted(task_ids, key=split_value)
    return {t for t in ranked if split_value(t) < val_fraction} | set(ranked[:val_min])


@dataclass
class Dataset:
    classes: list[ClassSpec]
    train: list[TrainingExample]
    validation: list[TrainingExample]
    train_task_ids: list[int]
    validation_task_ids: list[int]
    skipped: list[str]
    train_files: list[Path] = field(default_factory=list)
    validation_files: list[Path] = field(default_factory=list)
    """The cached image file of each example (what the training processes read), parallel to ``train`` /
    ``validation`` like the task ids (a video task's id once per frame)."""
    """One line per labeled task left out (image unreadable, unknown label), for the round's report."""


def project_classes(store: Store, project_id: int) -> list[ClassSpec]:
    """What the detector trains on (``ProjectSchema.classes``): every label with a phrase of its own, and each label
    group as its phrase."""
    return _schema(store, project_id).classes


def _schema(store: Store, project_id: int) -> "ProjectSchema":
    schema = store.projects.schema(project_id)
    if schema is None:
        raise ValueError(f"project {project_id} has no <RectangleLabels>, <BrushLabels> or <PolygonLabels> in its "
                         "label config in the store; open it in Label Studio once or run "
                         "`groundloop sync --project N`")
    return schema


def _example(task: LabeledTask, cache: ImageCache, class_index: dict[str, int], skipped: list[str],
             schema: "ProjectSchema") -> list[tuple[TrainingExample, Path]]:
    """The task's boxes on its image; boxes of smart tools (``schema.label_boxes``) left out silently."""
    try:
        fetched = cache.get(task.image_url)
    except ImageError as error:
        skipped.append(f"task {task.task_id}: image unavailable ({error})")
        return []
    boxes, class_ids = [], []
    for box in schema.label_boxes(task.boxes):
        if box["label"] not in class_index:
            skipped.append(f"task {task.task_id}: box label {box['label']!r} is not a class of the project; box left out")
            continue
        boxes.append(box["box"])
        class_ids.append(class_index[box["label"]])
    return [(_training_example(fetched.image, boxes, class_ids), cache.path_for(fetched.sha256))]


def _video_examples(task: LabeledTask, cache: ImageCache, class_index: dict[str, int], skipped: list[str],
                    schema: "ProjectSchema") -> list[tuple[TrainingExample, Path]]:
    """Frames sampled along the task's human tracks, with the boxes Label Studio shows on them."""
    from active_learning.labelstudio.video_regions import sample_frames, tracks_from_result
    from active_learning.video.cache import VideoCache
    from active_learning.video.frames import FrameClock, VideoError, probe, read_frames

    settings = cache.settings
    try:
        path = VideoCache(settings, cache.fetcher).path(task.image_url)
        info = probe(path)
        tracks = tracks_from_result(task.result, info.width, info.height, f"task {task.task_id}")
    except (ImageError, VideoError, ValueError) as error:
        skipped.append(f"task {task.task_id}: video unavailable ({error})")
        return []
    controls = {control.name for control in schema.controls}
    tracks = [t for t in tracks if t.from_name in controls]
    for label in sorted({t.label for t in tracks} - set(class_index)):
        skipped.append(f"task {task.task_id}: track label {label!r} is not a class of the project; tracks left out")
    tracks = [t for t in tracks if t.label in class_index]
    frames_count = FrameClock(info, schema.framerate).frames_count
    numbers = sample_frames(tracks, settings.video_stride, settings.video_train_frames, frames_count)
    examples = []
    try:
        for frame in read_frames(path, numbers, schema.framerate):
            shown = [(t.box_at(frame.number), class_index[t.label]) for t in tracks]
            shown = [(box, class_id) for box, class_id in shown if box is not None]
            buffer = io.BytesIO()
            frame.image.save(buffer, format="PNG")
            fetched = cache.put(f"{task.image_url}#frame={frame.number}", buffer.getvalue())
            examples.append((_training_example(fetched.image, [b for b, _ in shown], [c for _, c in shown]),
                             cache.path_for(fetched.sha256)))
    except VideoError as error:
        skipped.append(f"task {task.task_id}: video unreadable ({error})")
    return examples


def _training_example(image, boxes: list, class_ids: list[int]) -> TrainingExample:
    xyxy = np.clip(np.array(boxes, dtype=float).reshape(-1, 4), 0, [image.width, image.height] * 2)
    return TrainingExample(image, sv.Detections(xyxy=xyxy, class_id=np.array(class_ids, dtype=int)))


def build_dataset(store: Store, cache: ImageCache, project_id: int, val_fraction: float,
                  val_min: int) -> Dataset:
    """Every live labeled task of the project (the newest live, not skipped annotation each), split."""
    schema = _schema(store, project_id)
    classes = schema.classes
    index = {c.name: i for i, c in enumerate(classes)}
    class_index = {label.name: index[schema.detection_class(label.name)] for label in schema.labels}
    tasks = store.tasks.labeled(project_id)
    validate = validation_ids([t.task_id for t in tasks], val_fraction, val_min)
    dataset = Dataset(classes, [], [], [], [], [])
    examples_of = _video_examples if schema.is_video else _example
    for task in tasks:
        for example, file in examples_of(task, cache, class_index, dataset.skipped, schema):
            if task.task_id in validate:
                dataset.validation.append(example)
                dataset.validation_task_ids.append(task.task_id)
                dataset.validation_files.append(file)
            else:
                dataset.train.append(example)
                dataset.train_task_ids.append(task.task_id)
                dataset.train_files.append(file)
    for line in dataset.skipped:
        log.warning("project %d: %s", project_id, line)
    return dataset
