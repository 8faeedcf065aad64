"""Prompt choice, and the served pipeline it is part of: which phrases a version searches, then its thresholds.

A class is searched by its name and its aliases (``predicted_values``). Aliases are guesses by whoever wrote the
config, and some guesses only bring false boxes ("disc" finds plates as well as circles); a fine-tuned model
learns the names it is trained on, so an alias can also fall behind the name round after round. Each is
measured on the validation images instead of trusted:

1. **Alone.** For every class with more than one phrase, each phrase is searched alone (the class's other
   phrases left out of the prompt, the other classes as they are) and costed as calibration costs a class: its
   boxes against the class's true boxes, at the threshold cheapest for the annotator (``calibration.calibrate``).
2. **Choice.** A phrase that alone saves time (costs less than drawing the class's objects from scratch) is kept;
   the others are dropped from the served prompt. When no phrase saves time alone, the cheapest one is kept (the
   class is then usually abstained). A class without true boxes on validation keeps every phrase.
3. **Check.** The prompt with the choice is calibrated as usual (thresholds, abstention, and the NMS IoU:
   ``calibration.calibrate_detector``) and replaces the full prompt only if it saves at least as much time on the same
   images; otherwise nothing is dropped.

Dropped phrases stay in the label config; the choice is stored with the version beside its thresholds
(``Calibration.dropped``, per-phrase figures in ``Calibration.classes``), served with it and shown in status.
It works for any model, the starting one included: nothing here trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Mapping, Sequence

from active_learning.reports.corrections import ActionCosts
from active_learning.serving.calibration import Calibration, ImageBoxes, calibrate, calibrate_detector, \
    detect_validation

if TYPE_CHECKING:
    from model.config import DetectionSettings
    from model.detector import Detector
    from model.prompts import ClassSpec
    from model.training import TrainingExample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhraseChoice:
    dropped: dict[str, tuple[str, ...]]
    """Class -> the phrases left out of its prompt."""
    saved_alone: dict[str, dict[str, float]]
    """Class -> phrase -> estimated time saved with that phrase searched alone (0: it would be abstained)."""


def choose_phrases(found_alone: Mapping[str, Mapping[str, Sequence[ImageBoxes]]], costs: ActionCosts,
                   floor: float) -> PhraseChoice:
    """``found_alone[class][phrase]``: the validation images' boxes of ``class`` when ``phrase`` alone searched
    for it (steps 1 and 2 of the module docstring)."""
    dropped: dict[str, tuple[str, ...]] = {}
    saved_alone: dict[str, dict[str, float]] = {}
    for label, by_phrase in found_alone.items():
        details = {phrase: calibrate(images, [label], costs, floor=floor).classes.get(label)
                   for phrase, images in by_phrase.items()}
        if not details or any(detail is None for detail in details.values()):
            continue  # no true box of the class: nothing to measure the phrases against
        saved_alone[label] = {phrase: round(float(d["time_saved"]), 4) for phrase, d in details.items()}
        kept = [phrase for phrase, d in details.items() if d["seconds_with_predictions"] < d["seconds_from_scratch"]]
        if not kept:
            kept = [min(details, key=lambda phrase: details[phrase]["seconds_with_predictions"])]
        if len(kept) < len(details):
            dropped[label] = tuple(phrase for phrase in details if phrase not in kept)
    return PhraseChoice(dropped, saved_alone)


def tune_served_pipeline(detector: "Detector", examples: Sequence["TrainingExample"],
                         classes: Sequence["ClassSpec"], detection: "DetectionSettings",
                         costs: ActionCosts) -> Calibration:
    """What ``detector`` should serve for ``classes``, measured on ``examples``: the phrase choice and the
    calibrated thresholds of the prompt it leaves (step 3). ``detection`` as for ``calibrate_detector``."""
    full = calibrate_detector(detector, examples, classes, detection, costs)
    choice = choose_phrases(_found_alone(detector, examples, classes, detection), costs, detection.box_threshold)
    if not choice.dropped:
        return _with_phrases(full, choice, {})
    chosen = [replace(c, dropped=choice.dropped.get(c.name, ())) for c in classes]
    tuned = calibrate_detector(detector, examples, chosen, detection, costs)
    if (tuned.val_time_saved or 0.0) < (full.val_time_saved or 0.0):
        log.info("prompt choice: dropping %s would save less time on validation (%.3f vs %.3f): every phrase "
                 "stays", choice.dropped, tuned.val_time_saved or 0.0, full.val_time_saved or 0.0)
        return _with_phrases(full, choice, {})
    log.info("prompt choice: dropped %s (they only add false boxes on validation)", choice.dropped)
    return _with_phrases(tuned, choice, choice.dropped)


def _found_alone(detector: "Detector", examples: Sequence["TrainingExample"], classes: Sequence["ClassSpec"],
                 detection: "DetectionSettings") -> dict[str, dict[str, list[ImageBoxes]]]:
    """Step 1, in as few detection passes as the most phrases any class has: pass k searches the k-th phrase of
    every class that has more than one (each class is costed against its own true boxes only)."""
    several = [c for c in classes if len(c.phrases) > 1]
    found: dict[str, dict[str, list[ImageBoxes]]] = {c.name: {} for c in several}
    for k in range(max((len(c.phrases) for c in several), default=0)):
        measured = {c.name: c.phrases[k] for c in several if k < len(c.phrases)}
        searched = [replace(c, dropped=tuple(p for p in c.phrases if p != measured[c.name]))
                    if c.name in measured else c for c in classes]
        images = detect_validation(detector, examples, searched, detection)
        for name, phrase in measured.items():
            found[name][phrase] = images
    return found


def _with_phrases(calibration: Calibration, choice: PhraseChoice, dropped: dict[str, tuple[str, ...]]) -> Calibration:
    classes = {name: {**detail, **({"phrases": choice.saved_alone[name]} if name in choice.saved_alone else {})}
               for name, detail in calibration.classes.items()}
    return replace(calibration, classes=classes, dropped=dropped)
