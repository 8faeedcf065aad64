"""Annotator effort: seconds with our pre-annotations against drawing every box, time saved, edits per object.

Every case goes through a real SQLite store the way production data does (Label Studio's webhook bodies through
``store.ingest``, served predictions through ``store.predictions.save``), and every expected figure is worked out
by hand from the default costs: draw 7 s, verify 1.6 s, adjust 3.5 s, relabel 2 s, delete 1.5 s.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, Iterator

import pytest

from active_learning.reports.corrections import ActionCosts, BoxChanges, correction_stats, estimate_effort
from active_learning.reports.status import collect_status, render_status
from active_learning.serving.pool import starting_model_version
from active_learning.settings import Settings
from active_learning.store import Store
from active_learning.training.rounds import run_round
from active_learning.training.worker import Worker
from tests.support.training import PROJECT, TOKEN, annotation_webhook

AS_BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
DEFAULTS = Settings().action_costs()
ALL_KEPT_SAVED = 1 - 1.6 / 7


def region(label: str, x1: float, y1: float, x2: float, y2: float, control: str = "label") -> dict:
    """A Label Studio rectanglelabels region (percentages) for a pixel box on a 100 x 100 image."""
    return {"type": "rectanglelabels", "from_name": control, "to_name": "image", "original_width": 100,
            "original_height": 100, "value": {"x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1, "rotation": 0,
                                              "rectanglelabels": [label]}}


CAT, DOG = region("cat", 10, 10, 40, 40), region("dog", 50, 50, 90, 90)
FAR_CAT, FAR_DOG = region("cat", 0, 60, 20, 80), region("dog", 60, 0, 80, 20)  # overlap neither CAT nor DOG


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'groundloop.db'}")
    yield store
    store.close()


@pytest.fixture
def annotate(store: Store, ls_request: Callable[[str], dict]) -> Callable[..., None]:
    """``annotate(annotation_id, task_id, final_regions, prediction=None)``: the webhook of a submitted annotation
    in project 1 (Label Studio's ``model_version`` "served"), created after anything served; ``prediction`` is the
    one Label Studio sends when the annotation started from it."""

    def submit(annotation_id: int, task_id: int, result: list, prediction: dict | None = None) -> None:
        body = ls_request("webhook_annotation_created")
        body["annotation"].update(id=annotation_id, task=task_id, result=result, prediction=prediction or {},
                                  created_at="2099-01-01T00:00:00Z", updated_at="2099-01-01T00:00:00Z")
        body["task"]["id"] = task_id
        body["project"]["model_version"] = "served"
        assert store.ingest(body).handled

    return submit


def sent(version: str, *result: dict) -> dict:
    return {"model_version": version, "result": list(result)}


def serve(store: Store, task_id: int, *result: dict) -> None:
    """Record that we served ``result`` for the task with version "served" (the project's model version)."""
    store.predictions.save(project_id=1, task_id=task_id, image_url=f"/{task_id}.png", model_version="served",
                           params_key="k", result=list(result), score=0.5)


def effort(summary_dict: dict) -> tuple:
    return tuple(summary_dict[key] for key in ("true_objects", "seconds_with_predictions", "seconds_from_scratch",
                                              "time_saved", "edits_per_object"))


# --- hand-made cases ---------------------------------------------------------------------------------------

def test_hand_computed_seconds_and_time_saved_per_model_version(store: Store, annotate) -> None:
    # all kept: 2 boxes verified (2 x 1.6 s) instead of drawn (2 x 7 s)
    annotate(1, 1, [CAT, DOG], sent("all-kept", CAT, DOG))
    # all wrong: both predicted boxes deleted (2 x 1.5 s) and both objects drawn anyway (2 x 7 s)
    annotate(2, 2, [CAT, DOG], sent("all-wrong", FAR_CAT, FAR_DOG))
    # nothing predicted (we served an empty result): every object drawn, exactly the time from scratch
    serve(store, 3)
    annotate(3, 3, [CAT, DOG])
    # one of each: kept 1.6 + moved 3.5 + relabeled 2 + deleted 1.5 + added 7 = 15.6 s for 4 objects (28 s)
    annotate(4, 4, [region("cat", 10, 10, 40, 40), region("dog", 50, 50, 86, 86), region("dog", 0, 0, 5, 5),
                    region("bus", 60, 0, 80, 20)],
             sent("one-of-each", region("cat", 10, 10, 40, 40), region("dog", 50, 50, 90, 90),
                  region("cat", 0, 0, 5, 5), region("car", 0, 60, 20, 80)))

    stats = {name: summary.as_dict() for name, summary in correction_stats(store, 1, DEFAULTS).items()}

    assert effort(stats["all-kept"]) == (2, 3.2, 14.0, pytest.approx(ALL_KEPT_SAVED), 0.0)
    assert effort(stats["all-wrong"]) == (2, 17.0, 14.0, pytest.approx(1 - 17 / 14), 2.0)
    assert stats["all-wrong"]["time_saved"] < 0  # correcting cost more than drawing from scratch
    assert effort(stats["served"]) == (2, 14.0, 14.0, 0.0, 1.0)
    one = stats["one-of-each"]
    assert (one["kept"], one["moved"], one["relabeled"], one["deleted"], one["added"]) == (1, 1, 1, 1, 1)
    assert effort(one) == (4, 15.6, 28.0, pytest.approx(1 - 15.6 / 28), 1.0)
    assert effort(one["controls"]["label"]) == effort(one)


def test_effort_sums_over_annotations_and_is_given_per_control(store: Store, annotate) -> None:
    # Two annotations of one version: kept + kept (3.2 s of 14 s), then a second control's box added (7 s of 7 s).
    annotate(1, 1, [CAT, DOG], sent("v1", CAT, DOG))
    annotate(2, 2, [region("person", 0, 0, 30, 30, control="people")], sent("v1"))

    [summary] = correction_stats(store, 1, DEFAULTS).values()
    stats = summary.as_dict()

    assert effort(stats) == (3, 10.2, 21.0, pytest.approx(1 - 10.2 / 21), pytest.approx(1 / 3))
    assert effort(stats["controls"]["label"]) == (2, 3.2, 14.0, pytest.approx(ALL_KEPT_SAVED), 0.0)
    assert effort(stats["controls"]["people"]) == (1, 7.0, 7.0, 0.0, 1.0)


def test_no_true_objects_reports_seconds_and_no_ratio(store: Store, annotate) -> None:
    annotate(1, 1, [], sent("false-alarm", CAT, DOG))  # both boxes deleted: 3 s, nothing to draw
    annotate(2, 2, [], sent("quiet"))  # nothing predicted, nothing there

    stats = {name: summary.as_dict() for name, summary in correction_stats(store, 1, DEFAULTS).items()}

    assert effort(stats["false-alarm"]) == (0, 3.0, 0.0, None, None)
    assert effort(stats["quiet"]) == (0, 0.0, 0.0, None, None)
    assert estimate_effort(BoxChanges(), DEFAULTS)["time_saved"] is None


def test_without_costs_the_summary_has_the_counts_alone(store: Store, annotate) -> None:
    annotate(1, 1, [CAT], sent("v1", CAT))
    [stats] = [summary.as_dict() for summary in correction_stats(store, 1).values()]
    assert "time_saved" not in stats and stats["kept"] == 1


# --- costs come from the settings ----------------------------------------------------------------------------

def test_costs_from_settings_change_the_figure(store: Store, annotate) -> None:
    annotate(1, 1, [CAT, DOG], sent("v1", CAT, DOG))
    slow_check = Settings.from_env({"GROUNDLOOP_COST_VERIFY_SECONDS": "3.5"})  # verifying takes half of drawing
    by_flag = Settings.from_env({}, cost_draw_seconds=16.0)  # a CLI flag: verify 1.6 s of 16 s

    assert DEFAULTS == ActionCosts(draw=7.0, verify=1.6, adjust=3.5, relabel=2.0, delete=1.5)
    [default] = correction_stats(store, 1, DEFAULTS).values()
    [slow] = correction_stats(store, 1, slow_check.action_costs()).values()
    [cheap] = correction_stats(store, 1, by_flag.action_costs()).values()

    assert default.as_dict()["time_saved"] == pytest.approx(ALL_KEPT_SAVED)
    assert effort(slow.as_dict()) == (2, 7.0, 14.0, 0.5, 0.0)
    assert effort(cheap.as_dict()) == (2, 3.2, 32.0, pytest.approx(0.9), 0.0)
    status = collect_status(store, costs=slow_check.action_costs())
    assert status["projects"][0]["corrections"]["v1"]["time_saved"] == 0.5
    assert status["action_costs"]["verify"] == 3.5


def test_a_negative_cost_is_refused() -> None:
    with pytest.raises(ValueError, match="verify cost"):
        Settings(cost_verify_seconds=-1.0).action_costs()


# --- where it shows ------------------------------------------------------------------------------------------

def test_status_json_and_text_show_effort_oldest_version_first(store: Store, annotate) -> None:
    # Registered versions: r1 created before r2. Annotations start from r2 first, then the starting model, then r1.
    store.models.add("p1-r1", "/models/p1-r1", project_id=1, parent="starting")
    store.models.add("p1-r2", "/models/p1-r2", project_id=1, parent="p1-r1", status="deployed")
    annotate(1, 1, [CAT, DOG], sent("p1-r2", CAT, DOG))            # all kept: 77%
    annotate(2, 2, [CAT, DOG], sent("starting", FAR_CAT, FAR_DOG))  # all wrong: 1 - 17/14 = -21%
    annotate(3, 3, [CAT, DOG], sent("p1-r1", CAT, FAR_DOG))         # 1.6 + 1.5 + 7 = 10.1 s of 14 s: 28%

    status = collect_status(store)  # a caller that passes no costs gets the settings' defaults
    [project] = status["projects"]

    assert list(project["corrections"]) == ["starting", "p1-r1", "p1-r2"]
    assert status["action_costs"] == {"draw": 7.0, "verify": 1.6, "adjust": 3.5, "relabel": 2.0, "delete": 1.5}
    assert effort(project["corrections"]["p1-r1"]) == (2, 10.1, 14.0, pytest.approx(1 - 10.1 / 14), 1.0)
    assert json.loads(json.dumps(status)) == status  # JSON as /status sends it: no infinities, no NaN

    text = render_status(status)
    header, *lines = text.split("corrections by annotators")[1].splitlines()[1:]
    assert header.startswith("    model version") and header.endswith("true objects  edits/object  time saved")
    rows = [line.split() for line in lines if line.split() and line.split()[0] in project["corrections"]]
    assert [(row[0], row[-3], row[-2], row[-1]) for row in rows] == [
        ("starting", "2", "2.00", "-21%"), ("p1-r1", "2", "1.00", "28%"), ("p1-r2", "2", "0.00", "77%")]
    assert "seconds per action: verify 1.6, adjust 3.5, relabel 2, delete 1.5, draw 7" in text


def test_the_status_page_shows_effort_escaped(make_client, ls_request) -> None:
    client, predictor = make_client()
    store = predictor.store
    version = "<b>v1</b> & co"
    for annotation_id, (final, predicted) in enumerate([([CAT, DOG], [CAT, DOG]), ([], [CAT])], 1):
        body = ls_request("webhook_annotation_created")
        body["annotation"].update(id=annotation_id, task=annotation_id, result=final,
                                  prediction=sent(version, *predicted))
        body["task"]["id"] = annotation_id
        assert store.ingest(body).handled
    body = ls_request("webhook_annotation_created")
    body["annotation"].update(id=3, task=3, result=[CAT, DOG], prediction=sent("bad", FAR_CAT, FAR_DOG))
    body["task"]["id"] = 3
    assert store.ingest(body).handled

    page = client.get("/status", headers=AS_BROWSER).text

    corrections = page.split("Corrections by annotators")[1]
    assert ('<th class="num">true objects</th><th class="num">edits/object</th><th class="num">time saved</th>'
            in corrections)
    assert "<b>v1</b>" not in page and "&lt;b&gt;v1&lt;/b&gt; &amp; co" in corrections
    # v1: kept 2 (3.2 s) + deleted 1 (1.5 s) = 4.7 s for 2 objects (14 s): 66% saved, 0.5 edits per object
    assert '<td class="num">2</td>\n          <td class="num">0.50</td>' in corrections
    assert 'class="num saves" title="4.7 s with our boxes, 14 s drawing every box">66%</td>' in corrections
    assert 'class="num costs" title="17 s with our boxes, 14 s drawing every box">-21%</td>' in corrections
    assert "verify a kept box 1.6 s" in " ".join(corrections.split())


# --- a round's report --------------------------------------------------------------------------------------

@pytest.fixture
def round_settings(tmp_path: Path, small_model_dir: Path, media_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", model=str(small_model_dir), device="cpu", image_size=128,
        label_studio_url=media_url, label_studio_api_key=TOKEN, epochs=1, batch_size=4, patience=1,
        val_fraction=0.25, val_min=2, cost_verify_seconds=3.5,
    )


@pytest.mark.slow  # one real (one-epoch) fine-tuning round
def test_a_round_report_carries_what_the_deployed_model_cost_annotators(round_settings: Settings, shapes,
                                                                        ls_request, detector) -> None:
    store = Store.from_settings(round_settings)
    starting = starting_model_version(detector)
    for index, sample in enumerate(shapes[:6]):
        body = annotation_webhook(ls_request, index, sample)
        if index < 3:  # these three started from the starting model's boxes, and the annotator kept them all
            body["annotation"]["prediction"] = sent(starting, *copy.deepcopy(body["annotation"]["result"]))
        assert store.ingest(body).handled
    kept = sum(len(sample.targets.class_id) for sample in shapes[:3])
    worker = Worker(round_settings, store)
    run_id = store.runs.request(PROJECT, "test")
    assert store.runs.claim(worker.owner, project_id=PROJECT).id == run_id

    outcome = run_round(round_settings, store, run_id, worker.owner)

    assert outcome.status in ("succeeded", "rejected"), outcome.error
    report = json.loads((round_settings.reports_dir / f"project-{PROJECT}" / f"run-{run_id}.json").read_text())
    assert report["baseline_version"] == starting
    baseline = report["baseline_effort"]
    assert baseline["model_version"] == starting and baseline["annotations"] == 3
    # verify costs 3.5 s here (the round's settings): half of drawing each box
    assert effort(baseline) == (kept, pytest.approx(3.5 * kept), pytest.approx(7.0 * kept), pytest.approx(0.5), 0.0)
    store.close()
