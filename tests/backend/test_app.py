"""The routes with the requests a real Label Studio 1.23.2 sent (tests/conftest.py ``ls_request``), answered by
the real detector on the small model, with images from a local media server (see tests/support/backend_fixtures.py)."""

from __future__ import annotations

import base64

import pytest

from tests.support.backend import IMAGE_SIZE, assert_prediction, deploy_copy

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


def test_health_names_the_starting_model(client, model_version):
    for path in ("/", "/health"):
        answer = client.get(path)
        assert answer.status_code == 200
        assert answer.json == {"status": "UP", "model_class": "Predictor", "model_version": model_version}


def test_setup_answers_the_model_version_and_records_the_project(client, store, ls_request, model_version):
    answer = client.post("/setup", json=ls_request("setup"))
    assert answer.status_code == 200
    assert answer.json == {"model_version": model_version}
    assert "<Label value=\"cat\"/>" in store.projects.get(1).label_config


def test_retrieve_predictions_one_per_task_in_order(client, store, ls_request, model_version, media):
    body = ls_request("predict_retrieve_predictions")
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200
    results = answer.json["results"]
    assert len(results) == len(body["tasks"]) == 3
    for task, prediction in zip(body["tasks"], results):
        assert_prediction(prediction, model_version)
        assert [p.result for p in store.predictions.served(task["id"], model_version)] == [prediction["result"]]
    assert {t["data"]["image"] for t in body["tasks"]} <= set(media.requests)


def test_a_bad_image_does_not_sink_the_batch_and_is_not_stored(client, store, ls_request):
    body = ls_request("predict_retrieve_predictions")
    body["tasks"][1]["data"]["image"] = "/data/upload/1/broken.png"  # the media server answers 404
    body["tasks"].append({"id": 4, "data": {"other": "x"}})  # no image at all
    results = client.post("/predict", json=body).json["results"]
    assert len(results) == 4
    assert results[0]["result"] and results[2]["result"]
    assert results[1] == [] and results[3] == []  # Label Studio stores nothing for these and asks again
    assert store.predictions.served(2) == [] and store.predictions.served(4) == []
    assert client.get("/metrics").json["failures"] == 2


def test_a_detector_error_costs_only_that_task(client, detector, ls_request, monkeypatch, model_version):
    real_detect, calls = detector.detect, []

    def fails_on_the_second_image(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected fault")
        return real_detect(*args, **kwargs)

    monkeypatch.setattr(detector, "detect", fails_on_the_second_image)
    answer = client.post("/predict", json=ls_request("predict_retrieve_predictions"))
    assert answer.status_code == 200
    first, second, third = answer.json["results"]
    assert second == []
    assert_prediction(first, model_version)
    assert_prediction(third, model_version)


def test_predictions_made_before_come_from_the_store(client, ls_request, media):
    body = ls_request("predict_retrieve_predictions")
    first = client.post("/predict", json=body).json
    fetched = len(media.requests)
    second = client.post("/predict", json=body).json
    assert second == first
    assert len(media.requests) == fetched
    metrics = client.get("/metrics").json
    assert (metrics["predictions"], metrics["cache_hits"]) == (3, 3)


def test_other_thresholds_are_not_answered_from_the_cache(make_client, ls_request):
    body = ls_request("predict_retrieve_predictions")
    make_client()[0].post("/predict", json=body)
    other, _ = make_client(box_threshold=0.5)
    other.post("/predict", json=body)
    metrics = other.get("/metrics").json
    assert (metrics["predictions"], metrics["cache_hits"]) == (3, 0)


def test_tasks_over_the_budget_are_finished_in_the_background(make_client, store, ls_request, model_version):
    body = ls_request("predict_retrieve_predictions")
    make_client()[0].post("/predict", json={**body, "tasks": body["tasks"][:1]})
    client, predictor = make_client(predict_budget_seconds=0.0)  # every task not in the store is over budget

    results = client.post("/predict", json=body).json["results"]
    assert_prediction(results[0], model_version)
    assert results[1:] == [[], []]  # answered at once; Label Studio stores nothing for these

    predictor.backfill.wait()
    assert len(store.predictions.served(2, model_version)) == len(store.predictions.served(3, model_version)) == 1
    again = client.post("/predict", json=body).json["results"]  # the next "Retrieve predictions"
    for prediction in again:
        assert_prediction(prediction, model_version)
    metrics = client.get("/metrics").json
    assert metrics["skipped_over_budget"] == 2 and metrics["predicted_in_background"] == 2
    assert metrics["cache_hits"] == 1 + 3


def test_model_score_threshold_of_the_control_wins(client, ls_request):
    body = ls_request("predict_retrieve_predictions")
    body["label_config"] = body["label_config"].replace(
        '<RectangleLabels name="label"', '<RectangleLabels name="label" model_score_threshold="0.6"'
    )
    for prediction in client.post("/predict", json=body).json["results"]:
        assert all(region["score"] >= 0.6 for region in prediction["result"])


def test_config_without_rectangles_is_explained_and_predicts_nothing(client, ls_request, model_version, media):
    setup = ls_request("setup")
    setup["schema"] = NO_RECTANGLES
    answer = client.post("/setup", json=setup)
    assert answer.status_code == 200
    assert answer.json["model_version"] == model_version
    assert "no <RectangleLabels>" in answer.json["warning"]
    body = ls_request("predict_retrieve_predictions")
    body["label_config"] = NO_RECTANGLES
    fetched = len(media.requests)
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200 and answer.json == {"results": [[], [], []]}
    assert len(media.requests) == fetched


def test_interactive_prompt_is_detected_and_remembered(client, store, ls_request, model_version):
    body = ls_request("predict_interactive")
    body["label_config"] = PROMPT_CONFIG
    typed = {"from_name": "prompt", "to_name": "image", "type": "textarea", "value": {"text": ["puppy, red car"]}}
    body["params"]["context"] = {"result": [typed]}
    prediction = client.post("/predict", json=body).json["results"][0]
    # "puppy" is an alias of the label "dog"; "red car" names no label and is searched as typed; "cat" is not asked
    assert_prediction(prediction, model_version, labels=("dog", "red car"))
    assert store.projects.prompt(1) == "puppy, red car"

    later = ls_request("predict_retrieve_predictions")
    later["label_config"] = PROMPT_CONFIG
    for prediction in client.post("/predict", json=later).json["results"]:
        assert_prediction(prediction, model_version, labels=("dog", "red car"))


def test_interactive_box_context_predicts_with_the_config_classes(client, ls_request, model_version):
    answer = client.post("/predict", json=ls_request("predict_interactive"))
    assert answer.status_code == 200
    (prediction,) = answer.json["results"]
    assert_prediction(prediction, model_version)


def test_a_deployed_version_serves_its_project_from_the_next_request(client, settings, store, ls_request,
                                                                     small_model_dir, model_version):
    body = ls_request("predict_retrieve_predictions")
    assert client.post("/predict", json=body).json["results"][0]["model_version"] == model_version

    deploy_copy(settings, store, small_model_dir, project_id=1, name="groundloop-p1-r1")
    assert client.post("/setup", json=ls_request("setup")).json["model_version"] == "groundloop-p1-r1"
    for prediction in client.post("/predict", json=body).json["results"]:
        assert_prediction(prediction, "groundloop-p1-r1")
    other_project = {**body, "project": "2.1795301709"}
    assert client.post("/predict", json=other_project).json["results"][0]["model_version"] == model_version


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


def test_webhooks_reach_the_store_and_labeled_images_are_cached(make_client, store, ls_request):
    client, predictor = make_client()
    created = client.post("/webhook", json=ls_request("webhook_annotation_created"))
    assert created.status_code == 200 and created.json["status"] == "ok"
    assert store.annotations.get(1).boxes[0]["label"] == "dog"
    predictor._image_caching.submit(lambda: None).result()  # the caching queued before this is done
    task = store.tasks.get(1)
    assert (task.width, task.height) == IMAGE_SIZE and predictor.images.path_for(task.image_sha256).exists()

    assert client.post("/webhook", json=ls_request("webhook_annotation_updated")).status_code == 200
    assert store.annotations.get(1).boxes[0]["label"] == "cat"

    assert client.post("/webhook", json=ls_request("webhook_annotations_deleted")).status_code == 200
    assert store.annotations.get(1).deleted

    training = client.post("/webhook", json=ls_request("webhook_start_training"))
    assert training.status_code == 200
    assert [run.status for run in store.runs.of_project(1)] == ["queued"]


def test_unknown_webhook_actions_are_acknowledged(client):
    answer = client.post("/webhook", json={"action": "LABEL_LINK_CREATED", "project": {"id": 1}})
    assert answer.status_code == 200 and answer.json["status"] == "ignored"


def test_basic_auth_guards_every_route(make_client, ls_request):
    client, _ = make_client(basic_auth_user="ls", basic_auth_pass="s3cret")
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    requests = [
        ("GET", "/", None), ("GET", "/health", None), ("GET", "/metrics", None), ("GET", "/status", None),
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


def test_status_shows_versions_runs_and_corrections(client, store, settings, ls_request, model_version,
                                                    small_model_dir):
    served = client.post("/predict", json=ls_request("predict_retrieve_predictions")).json["results"][0]
    webhook = ls_request("webhook_annotation_created")  # task 1 annotated, starting from our prediction
    webhook["project"]["model_version"] = model_version
    webhook["annotation"].update(created_at="2030-01-01T00:00:00Z", updated_at="2030-01-01T00:00:00Z")
    assert client.post("/webhook", json=webhook).status_code == 200
    run_id = store.runs.request(1, "test")
    store.runs.claim("test", project_id=1)
    store.runs.update(run_id, train_size=8, val_size=2, epoch={"epoch": 1, "train_loss": 1.5, "map": 0.2})
    metrics = {"val": {"map": 0.2}, "baseline": {"map": 0.1}, "best_epoch": 1}
    deploy_copy(settings, store, small_model_dir, 1, "groundloop-p1-r1", metrics, parent=model_version)
    store.runs.finish(run_id, "succeeded", model_version="groundloop-p1-r1")

    (project,) = client.get("/status").json["projects"]
    assert project["project"] == 1
    assert project["deployed_version"] == project["serving_version"] == "groundloop-p1-r1"
    (run,) = project["training_runs"]
    assert (run["id"], run["trigger"], run["status"], run["train_size"], run["val_size"]) == (
        run_id, "test", "succeeded", 8, 2)
    assert run["epochs"] == [{"epoch": 1, "train_loss": 1.5, "map": 0.2}]
    assert (run["best_epoch"], run["baseline"], run["error"]) == (1, {"map": 0.1}, None)
    assert run["started_at"] <= run["finished_at"]
    (version,) = project["model_versions"]
    assert (version["name"], version["status"], version["parent"], version["metrics"]) == (
        "groundloop-p1-r1", "deployed", model_version, {**metrics, "weights_digest": model_version.split("-")[-1]})
    corrections = project["corrections"][model_version]
    assert corrections["annotations"] == 1
    assert (corrections["predicted"], corrections["final"]) == (len(served["result"]), 1)
