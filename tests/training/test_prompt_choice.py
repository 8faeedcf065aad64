"""Prompt choice: per class, each of its name and aliases is searched alone on validation; a phrase that only adds
false boxes is left out of the served prompt (kept in the config), and the choice travels with the version."""

from __future__ import annotations

import numpy as np
import pytest

from active_learning.labelstudio.config import label_config_for, parse_label_config
from active_learning.reports.corrections import ActionCosts
from active_learning.reports.status import _calibration
from active_learning.serving.calibration import Calibration, ImageBoxes, calibrate_detector
from active_learning.serving.jobs import make_job
from active_learning.serving.predict import predict_images
from active_learning.serving.prompt_choice import choose_phrases, tune_served_pipeline
from active_learning.settings import Settings
from model.config import DetectionSettings
from model.prompts import ClassSpec, build_prompts
from model.synthetic import SHAPE_CLASSES
from model.training import TrainingExample

COSTS = ActionCosts(draw=7.0, verify=1.6, adjust=3.5, relabel=2.0, delete=1.5)
FLOOR = 0.01


def box(label, x1, y1, x2, y2, score=None):
    found = {"label": label, "box": [x1, y1, x2, y2]}
    return found if score is None else {**found, "score": score}


TRUE = [[box("car", 0, 0, 10, 10), box("car", 40, 40, 60, 50)], [box("car", 20, 20, 30, 30)]]


def test_an_alias_that_only_produces_false_boxes_is_dropped_and_a_useful_one_kept():
    found = {"car": {
        # the name finds two of the three cars
        "car": [ImageBoxes([box("car", 0, 0, 10, 10, 0.8)], TRUE[0]),
                ImageBoxes([box("car", 20, 20, 30, 30, 0.7)], TRUE[1])],
        # "vehicle" finds only false boxes, confidently
        "vehicle": [ImageBoxes([box("car", 70, 70, 90, 90, 0.9), box("car", 0, 50, 10, 60, 0.8)], TRUE[0]),
                    ImageBoxes([box("car", 50, 0, 60, 10, 0.95)], TRUE[1])],
        # "automobile" finds the third car (and one false box): alone it saves time too
        "automobile": [ImageBoxes([box("car", 40, 40, 60, 50, 0.6), box("car", 80, 0, 90, 10, 0.3)], TRUE[0]),
                       ImageBoxes([], TRUE[1])],
    }}
    choice = choose_phrases(found, COSTS, FLOOR)
    assert choice.dropped == {"car": ("vehicle",)}
    saved = choice.saved_alone["car"]
    assert saved["vehicle"] == 0.0  # alone it is abstained: no threshold makes its boxes worth checking
    assert saved["car"] > saved["automobile"] > 0  # the name finds 2 of 3 cars; the alias 1 of 3


def test_when_no_phrase_saves_time_alone_the_cheapest_stays_and_unseen_classes_keep_every_phrase():
    useless = {"bus": {
        "bus": [ImageBoxes([box("bus", 50, 50, 60, 60, 0.9)], [box("bus", 0, 0, 10, 10)])],
        "coach": [ImageBoxes([box("bus", 50, 50, 60, 60, 0.9), box("bus", 70, 70, 80, 80, 0.8)],
                             [box("bus", 0, 0, 10, 10)])],
    }, "tram": {  # no true tram on validation: nothing to measure the phrases against
        "tram": [ImageBoxes([box("tram", 0, 0, 5, 5, 0.9)], [])],
        "streetcar": [ImageBoxes([], [])],
    }}
    choice = choose_phrases(useless, COSTS, FLOOR)
    # both cost as much as drawing from scratch at their best threshold (they are abstained): the first of the
    # cheapest stays, so the prompt still has a phrase for the class
    assert choice.dropped == {"bus": ("coach",)}
    assert "tram" not in choice.dropped and "tram" not in choice.saved_alone


def test_the_served_prompt_leaves_dropped_phrases_out_and_the_cache_key_changes(tmp_path, detector):
    classes = [ClassSpec("car", ("vehicle", "automobile")), ClassSpec("person")]
    schema = parse_label_config(label_config_for(classes))
    settings = Settings(data_dir=tmp_path)
    calibration = Calibration({"car": 0.3}, dropped={"car": ("vehicle",)})
    job = make_job(settings, schema, 1, calibration=calibration)
    assert [c.phrases for c in job.classes] == [("car", "automobile"), ("person",)]
    assert schema.classes[0].phrases == ("car", "vehicle", "automobile")  # the config keeps it

    tokenizer = detector.processor.tokenizer
    [served] = build_prompts(job.classes, tokenizer, 256)
    assert served.phrases == ("car", "automobile", "person") and served.phrase_classes == (0, 0, 1)
    assert job.params_key != make_job(settings, schema, 1, calibration=Calibration({"car": 0.3})).params_key
    assert "car: not searching 'vehicle'" in _calibration({**calibration.as_metrics(), "dropped": {"car": ["vehicle"]}})
    assert Calibration.from_metrics({"calibration": calibration.as_metrics()}) == calibration


def test_tuning_a_real_detector_keeps_only_what_saves_time_and_serves_it(tmp_path, detector, shapes):
    # "blue circle" has the alias "blue disc"; a second alias names another class's shape: it can only add false
    # blue circles
    classes = [SHAPE_CLASSES[0], ClassSpec("blue circle", ("blue disc", "green triangle")), SHAPE_CLASSES[2]]
    examples = [TrainingExample(s.image, s.targets) for s in shapes[:6]]
    detection = DetectionSettings(box_threshold=FLOOR, text_threshold=0.0, image_size=128)

    tuned = tune_served_pipeline(detector, examples, classes, detection, COSTS)
    full = calibrate_detector(detector, examples, classes, detection, COSTS)

    phrases = tuned.classes["blue circle"]["phrases"]
    assert set(phrases) == {"blue circle", "blue disc", "green triangle"}
    dropped = tuned.dropped.get("blue circle", ())
    assert set(dropped) < set(phrases), "a class keeps at least one phrase"
    assert all(phrases[p] == 0.0 for p in dropped), "only phrases that save nothing alone are dropped"
    assert (tuned.val_time_saved or 0) >= (full.val_time_saved or 0), "the choice never saves less than all phrases"

    schema = parse_label_config(label_config_for(classes))
    job = make_job(Settings(data_dir=tmp_path, image_size=128, text_threshold=0.0), schema, 1, calibration=tuned)
    assert not set(job.classes[1].phrases) & set(dropped)
    [predicted] = predict_images(detector, [shapes[0].image], job)
    served = {r["value"]["rectanglelabels"][0] for r in predicted.result}
    assert not served & set(tuned.abstained)
    assert all(np.isfinite(r["score"]) for r in predicted.result)


@pytest.mark.parametrize("dropped", [("blue circle",), ("blue disc",)])
def test_dropping_the_name_itself_keeps_the_class_label(dropped):
    spec = ClassSpec("blue circle", ("blue disc",), dropped=dropped)
    assert spec.name == "blue circle" and len(spec.phrases) == 1 and spec.phrases[0] not in dropped
