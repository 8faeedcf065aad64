"""The routes with the requests a real Label Studio 1.23.2 sent (tests/conftest.py ``ls_request``)."""

from __future__ import annotations

import base64
import time
from dataclasses import replace

import pytest

from model import ClassSpec

from .conftest import IMAGE_SIZE

MODEL_VERSION = "fake-dino-0123456789ab"
PROMPT_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<TextArea name="prompt" toName="image" editable="true" showSubmitButton="true"/>'
    '<RectangleLabels name="label" toName="image"><Label value="cat"/><Label value="dog" predicted_values="puppy"/>'
    "</RectangleLabels></View>"
)
NO_RECTANGLES = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="scene" toName="image"><Choice value="indoor"/></Choices></View>'
)


def test_health_names_the_model(client):
    for path in ("/", "/health"):
        answer = client.get(path)
        assert answer.status_code == 200
        assert answer.json == {"status": "UP", "model_class": "Predictor", "model_version": MODEL_VERSION}


def test_setup_answers_the_model_version_and_records_the_project(client, store, ls_request):
    answer = client.post("/setup", json=ls_request("setup"))
    assert answer.status_code == 200
    assert answer.json == {"model_version": MODEL_VERSION}
    assert "<Label value=\"cat\"/>" in store.get_project(1).label_config


def test_setup_and_predict_keep_the_label_studio_project_in_step(make_client, ls_request, monkeypatch):
    monkeypatch.setattr("backend.predictor.SYNC_RETRY_DELAYS", (0.0, 0.0, 0.0))
    calls = []

    def sync(project, version):
        calls.append((project, version))
        if len(calls) == 1:  # what Label Studio answers while no prediction carries the version yet
            raise RuntimeError("Model version doesn't exist either as live model or as static predictions.")

    client, predictor = make_client(sync_model_version=sync)
    assert client.post("/setup", json=ls_request("setup")).status_code == 200
    predictor._background.submit(lambda: None).result()  # wait for the background work
    assert calls == [(1, MODEL_VERSION)] * 2

    client.post("/predict", json=ls_request("predict_retrieve_predictions"))
    predictor._background.submit(lambda: None).result()
    assert calls == [(1, MODEL_VERSION)] * 3


def test_retrieve_predictions_one_per_task_in_order(client, store, ls_request, detector):
    body = ls_request("predict_retrieve_predictions")
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200
    results = answer.json["results"]
    assert len(results) == len(body["tasks"]) == 3
    width, height = IMAGE_SIZE
    for task, prediction in zip(body["tasks"], results):
        assert prediction["model_version"] == MODEL_VERSION
        assert prediction["score"] == pytest.approx(0.3)
        (region,) = prediction["result"]
        assert (region["from_name"], region["to_name"], region["type"]) == ("label", "image", "rectanglelabels")
        assert (region["original_width"], region["original_height"]) == (width, height)
        assert region["score"] == pytest.approx(0.8)
        value = region["value"]
        assert value["rectanglelabels"] == ["cat"]
        # the fake box runs past the right edge: clipped to the image
        boxes = {k: value[k] for k in ("x", "y", "width", "height")}
        assert boxes == pytest.approx({"x": 25.0, "y": 50.0, "width": 75.0, "height": 25.0})
        assert [p.result for p in store.served_predictions(task["id"], MODEL_VERSION)] == [prediction["result"]]
    assert detector.calls[0][1] == [ClassSpec("cat"), ClassSpec("dog")]


def test_a_bad_image_does_not_sink_the_batch_and_is_not_stored(client, store, fetcher, ls_request):
    body = ls_request("predict_retrieve_predictions")
    fetcher.broken.add(body["tasks"][1]["data"]["image"])
    body["tasks"].append({"id": 4, "data": {"other": "x"}})  # no image at all
    results = client.post("/predict", json=body).json["results"]
    assert len(results) == 4
    assert results[0]["result"] and results[2]["result"]
    assert results[1] == [] and results[3] == []  # Label Studio stores nothing for these and asks again
    assert store.served_predictions(2) == [] and store.served_predictions(4) == []
    assert client.get("/metrics").json["failures"] == 2


def test_a_detector_error_costs_only_that_task(client, detector, ls_request):
    detector.fail = True
    answer = client.post("/predict", json=ls_request("predict_retrieve_predictions"))
    assert answer.status_code == 200
    assert answer.json["results"] == [[], [], []]


def test_predictions_made_before_come_from_the_store(client, detector, fetcher, ls_request):
    body = ls_request("predict_retrieve_predictions")
    first = client.post("/predict", json=body).json
    fetched = len(fetcher.fetched)
    second = client.post("/predict", json=body).json
    assert second == first
    assert len(detector.calls) == 3 and len(fetcher.fetched) == fetched
    assert client.get("/metrics").json["cache_hits"] == 3


def test_other_thresholds_are_not_answered_from_the_cache(make_client, detector, ls_request):
    body = ls_request("predict_retrieve_predictions")
    make_client()[0].post("/predict", json=body)
    make_client(box_threshold=0.5)[0].post("/predict", json=body)
    assert len(detector.calls) == 6


def test_over_budget_tasks_get_no_prediction_but_cached_ones_are_answered(make_client, store, ls_request):
    body = ls_request("predict_retrieve_predictions")
    first_task_only = {**body, "tasks": body["tasks"][:1]}
    make_client()[0].post("/predict", json=first_task_only)
    client, _ = make_client(predict_budget_seconds=0.0)
    results = client.post("/predict", json=body).json["results"]
    assert results[0]["model_version"] == MODEL_VERSION
    assert results[1:] == [[], []]
    assert store.served_predictions(2) == [] and store.served_predictions(3) == []
    assert client.get("/metrics").json["skipped_over_budget"] == 2


def test_model_score_threshold_of_the_control_wins(client, detector, ls_request):
    body = ls_request("predict_retrieve_predictions")
    body["label_config"] = body["label_config"].replace(
        '<RectangleLabels name="label"', '<RectangleLabels name="label" model_score_threshold="0.6"'
    )
    client.post("/predict", json=body)
    assert detector.calls[0][2].box_threshold == 0.6


def test_config_without_rectangles_is_explained_and_predicts_nothing(client, detector, ls_request):
    setup = ls_request("setup")
    setup["schema"] = NO_RECTANGLES
    answer = client.post("/setup", json=setup)
    assert answer.status_code == 200
    assert answer.json["model_version"] == MODEL_VERSION
    assert "no <RectangleLabels>" in answer.json["warning"]
    body = ls_request("predict_retrieve_predictions")
    body["label_config"] = NO_RECTANGLES
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200 and answer.json == {"results": [[], [], []]}
    assert detector.calls == []


def test_interactive_prompt_is_detected_and_remembered(client, store, detector, ls_request):
    body = ls_request("predict_interactive")
    body["label_config"] = PROMPT_CONFIG
    typed = {"from_name": "prompt", "to_name": "image", "type": "textarea", "value": {"text": ["puppy, red car"]}}
    body["params"]["context"] = {"result": [typed]}
    prediction = client.post("/predict", json=body).json["results"][0]
    # "puppy" is an alias of the label "dog"; "red car" names no label and is searched as typed
    assert detector.calls[-1][1] == [ClassSpec("dog", ("puppy",)), ClassSpec("red car")]
    assert prediction["result"][0]["value"]["rectanglelabels"] == ["dog"]
    assert store.project_prompt(1) == "puppy, red car"

    later = ls_request("predict_retrieve_predictions")
    later["label_config"] = PROMPT_CONFIG
    client.post("/predict", json=later)
    assert detector.calls[-1][1] == [ClassSpec("dog", ("puppy",)), ClassSpec("red car")]


def test_interactive_box_context_predicts_with_the_config_classes(client, detector, ls_request):
    answer = client.post("/predict", json=ls_request("predict_interactive"))
    assert answer.status_code == 200
    assert len(answer.json["results"]) == 1
    assert detector.calls[0][1] == [ClassSpec("cat"), ClassSpec("dog")]


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/setup", b"{not json", "JSON object"),
        ("/setup", b"[1, 2]", "JSON object"),
        ("/setup", {"project": "1.1"}, "missing field 'schema'"),
        ("/setup", {"schema": 5}, "'schema' must be a string"),
        ("/setup", {"schema": "<View"}, "cannot be parsed"),
        ("/predict", {"label_config": "<View/>"}, "missing field 'tasks'"),
        ("/predict", {"tasks": {"id": 1}, "label_config": "<View/>"}, "'tasks' must be a list"),
        ("/predict", {"tasks": [1], "label_config": "<View/>"}, "'data' object"),
        ("/predict", {"tasks": [], "label_config": "<View/>", "params": "x"}, "'params' must be an object"),
        ("/predict", {"tasks": []}, "missing field 'label_config'"),
        ("/webhook", b"", "JSON object"),
        ("/webhook", {"annotation": {}}, "action"),
        ("/webhook", {"action": "ANNOTATION_CREATED", "annotation": "x"}, "annotation"),
    ],
)
def test_malformed_requests_get_400_with_a_message(client, path, body, message):
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body, "content_type": "application/json"}
    answer = client.post(path, **kwargs)
    assert answer.status_code == 400
    assert message in answer.json["error"]
    assert "Traceback" not in answer.get_data(as_text=True)


def test_unknown_routes_and_methods_answer_json(client):
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json
    assert client.get("/predict").status_code == 405 and "error" in client.get("/predict").json


def test_webhooks_reach_the_store(client, store, ls_request):
    created = client.post("/webhook", json=ls_request("webhook_annotation_created"))
    assert created.status_code == 200 and created.json["status"] == "ok"
    assert store.get_annotation(1).boxes[0]["label"] == "dog"

    assert client.post("/webhook", json=ls_request("webhook_annotation_updated")).status_code == 200
    assert store.get_annotation(1).boxes[0]["label"] == "cat"

    assert client.post("/webhook", json=ls_request("webhook_annotations_deleted")).status_code == 200
    assert store.get_annotation(1).deleted

    training = client.post("/webhook", json=ls_request("webhook_start_training"))
    assert training.status_code == 200
    assert [run.status for run in store.training_runs(1)] == ["queued"]


def test_unknown_webhook_actions_are_acknowledged(client):
    answer = client.post("/webhook", json={"action": "LABEL_LINK_CREATED", "project": {"id": 1}})
    assert answer.status_code == 200 and answer.json["status"] == "ignored"


def test_basic_auth_guards_every_route(make_client, ls_request):
    client, _ = make_client(basic_auth_user="ls", basic_auth_pass="s3cret")
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    requests = [
        ("GET", "/", None), ("GET", "/health", None), ("GET", "/metrics", None),
        ("POST", "/setup", ls_request("setup")),
        ("POST", "/predict", ls_request("predict_retrieve_predictions")),
        ("POST", "/webhook", ls_request("webhook_start_training")),
    ]
    for method, path, body in requests:
        for headers in ({}, bad):
            refused = client.open(path, method=method, json=body, headers=headers)
            assert refused.status_code == 401, path
            assert refused.json == {"error": "authentication required"}
            assert refused.headers["WWW-Authenticate"].startswith("Basic")
        assert client.open(path, method=method, json=body, headers=good).status_code == 200, path


def test_metrics_count_requests_and_latency(client, ls_request):
    client.post("/predict", json=ls_request("predict_retrieve_predictions"))
    client.get("/health")
    metrics = client.get("/metrics").json
    assert metrics["requests"]["/predict"] == 1 and metrics["requests"]["/health"] == 1
    assert metrics["predictions"] == 3
    assert metrics["latency"]["/predict"]["max_seconds"] >= metrics["latency"]["/predict"]["mean_seconds"] > 0


def test_a_real_small_model_answers_in_label_studio_format(small_model_dir, settings, store, fetcher, ls_request):
    from backend.app import create_app
    from backend.predictor import Predictor
    from model import Detector

    detector = Detector.load(small_model_dir, device="cpu")
    predictor = Predictor(replace(settings, box_threshold=0.0, max_detections=5), detector, store, fetcher)
    client = create_app(predictor.settings, predictor).test_client()
    started = time.monotonic()
    results = client.post("/predict", json=ls_request("predict_retrieve_predictions")).json["results"]
    assert time.monotonic() - started < 60
    assert predictor.model_version == f"{small_model_dir.name}-{detector.version_digest}"
    for prediction in results:
        assert 0.0 <= prediction["score"] <= 1.0
        assert 0 < len(prediction["result"]) <= 5
        for region in prediction["result"]:
            value = region["value"]
            assert value["rectanglelabels"][0] in ("cat", "dog")
            assert 0 <= value["x"] and value["x"] + value["width"] <= 100 + 1e-6
            assert 0 <= value["y"] and value["y"] + value["height"] <= 100 + 1e-6
