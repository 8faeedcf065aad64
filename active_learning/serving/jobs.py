"""What to predict for a project's tasks, worked out once per batch: the ``Job``.

A job is the project's schema, the classes to look for (the schema's, or an interactive prompt's), the detection
settings and each control's box threshold, and ``params_key``: the one cache-key recipe, a digest of everything
besides the image and the weights that changes the answer.

A job belongs to the model version that serves it: a version tuned by its training round (``calibration``)
brings the phrases its prompt choice dropped (searched for no control), and its per-class thresholds and
abstained classes, which apply on every control whose config sets no ``model_score_threshold`` (a threshold
written in the config wins for its control). Build the job after asking the pool for the model
(``project_job(..., calibration=model.calibration, classifier=model.classifier)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from active_learning.labelstudio.config import ProjectSchema, LabelsControl, label_config_for, parse_label_config
from active_learning.serving.calibration import Calibration
from active_learning.serving.labeling import fallback_labels
from active_learning.settings import Settings
from active_learning.store import Store
from active_learning.video.config import TrackingSettings
from model.config import DetectionSettings
from model.prompts import ClassSpec

if TYPE_CHECKING:
    from active_learning.serving.labeling import VersionClassifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    project_id: int | None
    schema: ProjectSchema
    classes: tuple[ClassSpec, ...]
    detection: DetectionSettings
    """One detect pass for all controls, at the lowest of their box thresholds ..."""
    thresholds: dict[str, float]
    """... then each control keeps the boxes above its own (``model_score_threshold``, else ours) ..."""
    params_key: str
    class_thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
    """... except that, on controls without ``model_score_threshold``, a class the serving version calibrated
    keeps the boxes above its calibrated threshold ..."""
    abstained: frozenset[str] = frozenset()
    """... and a class it abstains from gets no box there."""
    calibration: Calibration | None = None
    """The serving version's calibration the job was made with (None: the settings' threshold serves)."""
    segmenter: str | None = None
    """The segmenter that turns the boxes of mask controls into masks (``Settings.segmenter``); None when the
    schema has no mask control."""
    classifier: "VersionClassifier | None" = None
    """The serving version's heads for the schema's label groups (``labeling``); None: it has none."""
    classifier_backbone: str | None = None
    """The backbone the heads read crops with (``Settings.classifier_backbone``); None without label groups."""
    fallback_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Group phrase -> the label the annotators used most: what a group without a head serves."""
    tracking: TrackingSettings | None = None
    """How a video project's videos are sampled and tracked (``Settings.tracking_settings``); None for images."""

    def threshold(self, control: LabelsControl, label: str) -> float | None:
        """The score ``label``'s boxes must exceed on ``control`` (None: not served there). A threshold written in
        the config wins for its control; elsewhere the calibrated one, or ours, and abstained labels get none. A
        label of a group is calibrated as the group's phrase (what the detector scores)."""
        if control.score_threshold is not None:
            return control.score_threshold
        detected = self.schema.detection_class(label)
        if detected in self.abstained:
            return None
        return self.class_thresholds.get(detected, self.thresholds[control.name])

    def thresholds_for(self, control: str) -> dict[str, float | None]:
        """Class -> ``threshold`` on ``control`` for each of its classes."""
        spec = self.schema.control(control)
        return {c.name: self.threshold(spec, c.name) for c in spec.classes}


def make_job(settings: Settings, schema: ProjectSchema, project_id: int | None = None,
             classes: list[ClassSpec] | None = None, calibration: Calibration | None = None,
             classifier: "VersionClassifier | None" = None, fallback_labels: Mapping[str, str] | None = None) -> Job:
    """The job for ``schema``; ``classes`` replace the schema's (an interactive prompt's); ``calibration`` and
    ``classifier``: the serving version's (its thresholds and abstentions apply where the config sets no
    threshold; its heads label the boxes of label groups, ``fallback_labels`` those of groups without one)."""
    dropped = calibration.dropped if calibration else {}
    classes = tuple(dataclasses.replace(c, dropped=tuple(dropped[c.name])) if c.name in dropped else c
                    for c in (classes if classes is not None else schema.classes))
    thresholds = {c.name: settings.box_threshold if c.score_threshold is None else c.score_threshold
                  for c in schema.controls}
    names = {c.name for c in classes}
    class_thresholds = {name: t for name, t in (calibration.thresholds.items() if calibration else ())
                        if name in names}
    abstained = frozenset(name for name in (calibration.abstained if calibration else ()) if name in names)
    if calibration is not None and calibration.withheld:
        abstained = frozenset(names)
    calibrated_controls = any(c.score_threshold is None for c in schema.controls)
    lowest = min([*thresholds.values(), *(class_thresholds.values() if calibrated_controls else ())])
    detection = settings.detection_settings(box_threshold=lowest, slice_size=_slice_size(schema))
    if calibration is not None and calibration.nms_iou is not None:
        detection = dataclasses.replace(detection, nms_iou=calibration.nms_iou)
    key_source = {
        "image": [schema.image_name, schema.image_key],
        "controls": sorted(thresholds.items()),
        "labels": [[c.name, [s.name for s in c.classes]] for c in schema.controls],
        "classes": [[c.name, list(c.aliases)] for c in classes],
        "detection": _detection_key(detection),
    }
    if class_thresholds or abstained:  # absent without calibration: the keys of uncalibrated jobs stay as they were
        key_source["calibration"] = {"thresholds": sorted(class_thresholds.items()), "abstained": sorted(abstained)}
    if any(c.dropped for c in classes):
        key_source["dropped"] = [[c.name, list(c.dropped)] for c in classes if c.dropped]
    segmenter = settings.segmenter if schema.mask_controls else None
    if segmenter is not None:  # absent for box projects: their keys stay as they were
        key_source["masks"] = {"segmenter": segmenter, "kinds": [[c.name, c.kind] for c in schema.mask_controls]}
    backbone, fallback = None, {}
    if schema.label_groups:  # absent without label groups: the keys of other projects stay as they were
        backbone = settings.classifier_backbone
        fallback = {g.phrase: (fallback_labels or {}).get(g.phrase, g.labels[0]) for g in schema.label_groups}
        key_source["label_groups"] = {"groups": [[g.phrase, list(g.labels)] for g in schema.label_groups],
                                      "fallback": sorted(fallback.items()), "backbone": backbone}
    tracking = settings.tracking_settings() if schema.is_video else None
    if tracking is not None:  # absent for images: their keys stay as they were
        key_source["video"] = {"framerate": schema.framerate, "tracking": dataclasses.asdict(tracking)}
    params_key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:16]
    return Job(project_id, schema, classes, detection, thresholds, params_key, class_thresholds, abstained,
               calibration, segmenter, classifier if schema.label_groups else None, backbone, fallback, tracking)


def _detection_key(detection: DetectionSettings) -> dict:
    """The settings as the cache key sees them: slicing's fields only when it is on (off, they change nothing, and
    the keys of unsliced jobs stay as they were before slicing existed); not the CPU precision, which moves
    answers no more than running on another device does (and the device is no part of the key either)."""
    fields = dataclasses.asdict(detection)
    del fields["cpu_precision"]
    if not detection.slice_size:
        del fields["slice_size"], fields["slice_overlap"]
    return fields


def _slice_size(schema: ProjectSchema) -> int | None:
    """The tile size the config asks for (None: not set, the settings' applies). One detect pass serves every
    control, so when controls disagree the smallest non-zero size wins: the finest tiling any control asked for
    (its small objects need it; the others lose nothing, the whole image is still seen). 0 only when every control
    that sets the attribute sets 0."""
    sizes = [c.slice_size for c in schema.controls if c.slice_size is not None]
    if not sizes:
        return None
    return min((size for size in sizes if size), default=0)


def recalibrated(settings: Settings, job: Job, calibration: Calibration | None,
                 classifier: "VersionClassifier | None" = None) -> Job:
    """``job`` for a model with ``calibration`` and ``classifier`` (the same job when it already is): for a job made
    earlier whose project is now served by another version (background completion)."""
    if job.calibration == calibration and job.classifier == (classifier if job.schema.label_groups else None):
        return job
    return make_job(settings, job.schema, job.project_id, list(job.classes), calibration, classifier,
                    job.fallback_labels)


def project_job(settings: Settings, store: Store, schema: ProjectSchema, project_id: int | None,
                typed_prompt: str | None = None, calibration: Calibration | None = None,
                classifier: "VersionClassifier | None" = None) -> Job:
    """The job for a project: its config's classes, or the interactive prompt when the config has one.

    ``typed_prompt`` (what the annotator just typed) becomes the project's prompt; without it a config with a
    prompt ``<TextArea>`` uses the prompt remembered for the project. ``calibration`` and ``classifier``: the
    serving model's (``LoadedModel.calibration``, ``LoadedModel.classifier``).
    """
    prompt = typed_prompt
    if not prompt and schema.prompt_control is not None and project_id is not None:
        prompt = store.projects.prompt(project_id)
    classes = classes_for_prompt(prompt, schema.classes) if prompt else None  # past the limits: refused here ...
    if typed_prompt and project_id is not None:  # ... so never remembered
        store.projects.set_prompt(project_id, typed_prompt)
        log.info("project %s: detection prompt is now %r", project_id, typed_prompt)
    return make_job(settings, schema, project_id, classes, calibration, classifier,
                    fallback_labels(store, project_id, schema))


def folder_job(settings: Settings, classes: list[ClassSpec]) -> Job:
    """The job of ``groundloop predict``: the classes as one ``label`` control on ``image``."""
    return make_job(settings, parse_label_config(label_config_for(classes)))


MAX_PROMPT_CHARS = 2000
MAX_PROMPT_PHRASES = 50
"""An interactive prompt is a few phrases typed by a person; one of thousands would hold the detector for minutes
(and is remembered for the project), so it is refused."""


class PromptError(ValueError):
    """The typed prompt is too long; the message says the limits."""


def classes_for_prompt(prompt: str, labels: list[ClassSpec]) -> list[ClassSpec]:
    """Prompt phrases -> classes. A phrase naming a label (or one of its aliases) is that label; any other phrase
    is searched as typed and its boxes carry the phrase, for the annotator to relabel."""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError(f"the prompt has {len(prompt)} characters, more than {MAX_PROMPT_CHARS}")
    by_phrase = {p.lower(): label for label in labels for p in (label.name, *label.aliases)}
    classes: list[ClassSpec] = []
    for phrase in (p.strip() for p in re.split(r"[,.;\n]", prompt)):
        if not phrase:
            continue
        spec = by_phrase.get(phrase.lower(), ClassSpec(name=phrase))
        if spec not in classes:
            classes.append(spec)
    if len(classes) > MAX_PROMPT_PHRASES:
        raise PromptError(f"the prompt has {len(classes)} phrases, more than {MAX_PROMPT_PHRASES}")
    return classes
