"""Validation at the edge (the security issue's items 3 to 6): each exact hostile request gets a 400 with a one-line
reason, or (inside a batch) costs only its own task, and nothing stored can break status, training or export."""

from __future__ import annotations

import json

import pytest

from active_learning.reports.status import collect_status, render_status

CONFIG = ('<View><Image name="image" value="$image"/><TextArea name="prompt" toName="image"/>'
          '<RectangleLabels name="label" toName="image"><Label value="cat"/></RectangleLabels></View>')


def _annotation_webhook(annotation_id: int, result: list, **annotation) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {"id": 5},
            "task": {"id": annotation_id, "project": 5, "data": {"image": "/data/upload/5/a.png"}},
            "annotation": {"id": annotation_id, "task": annotation_id, "project": 5, "result": result,
                           "updated_at": "2026-12-01T10:00:00Z", **annotation}}


def _box(**value) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 64,
            "original_height": 48, "value": {"x": 10, "y": 10, "width": 20, "height": 20,
                                             "rectanglelabels": ["cat"], **value}}


def test_a_malformed_prediction_is_refused_and_status_keeps_working(client, store):
    answer = client.post("/webhook", json=_annotation_webhook(1, [_box()], prediction={"result": ["x"]}))
    assert answer.status_code == 400 and "annotation.prediction.result" in answer.json["error"]
    assert store.annotations.get(1) is None
    assert client.post("/webhook", json=_annotation_webhook(2, [_box()])).status_code == 200
    assert client.get("/status?format=json").status_code == 200
    assert client.get("/status?format=html").status_code == 200
    assert "project 5" in render_status(collect_status(store))


@pytest.mark.parametrize("value, field", [
    ({"x": float("inf")}, "finite"), ({"x": float("nan")}, "finite"), ({"width": 1e300}, "finite"),
    ({"x": 10**400}, "numeric"), ({"width": -5}, "not negative"),
])
def test_non_finite_or_absurd_coordinates_are_never_stored(client, store, value, field):
    body = _annotation_webhook(3, [_box(**value)])
    answer = client.post("/webhook", data=json.dumps(body, allow_nan=True),
                         content_type="application/json")
    assert answer.status_code == 400 and field in answer.json["error"]
    assert store.annotations.get(3) is None


@pytest.mark.parametrize("bad_id", [2**63, 2**31, 0, -4, "7", True])
def test_ids_outside_what_label_studio_sends_are_a_400(client, store, bad_id):
    body = _annotation_webhook(4, [_box()])
    body["annotation"]["id"] = bad_id
    answer = client.post("/webhook", json=body)
    assert answer.status_code == 400 and "annotation.id" in answer.json["error"]


def test_deeply_nested_json_is_a_400(client):
    body = "[" * 100_000 + "]" * 100_000
    answer = client.post("/webhook", data=body, content_type="application/json")
    assert answer.status_code == 400


def test_odd_project_ids_and_context_values_cost_nothing(client):
    tasks = [{"id": 11, "data": {"image": "/data/upload/5/a.png"}}]
    for project in ("²", "1e300", str(2**63), "-3"):
        answer = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG, "project": project})
        assert answer.status_code == 200 and len(answer.json["results"]) == 1
    context = {"result": [{"from_name": "prompt", "type": "textarea", "value": "not an object"}]}
    answer = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG, "project": "5.1",
                                           "params": {"context": context}})
    assert answer.status_code == 200


def test_a_huge_prompt_is_refused_and_not_remembered(client, store):
    prompt = ", ".join(f"thing {i}" for i in range(20_000))
    context = {"result": [{"from_name": "prompt", "type": "textarea", "value": {"text": [prompt]}}]}
    answer = client.post("/predict", json={"tasks": [{"id": 12, "data": {"image": "/data/upload/5/a.png"}}],
                                           "label_config": CONFIG, "project": "5.1", "params": {"context": context}})
    assert answer.status_code == 400 and "more than" in answer.json["error"]
    assert store.projects.prompt(5) is None


def test_a_config_of_thousands_of_labels_is_refused(client):
    labels = "".join(f'<Label value="l{i}"/>' for i in range(10_000))
    config = f'<View><Image name="image" value="$image"/><RectangleLabels name="r" toName="image">{labels}' \
             "</RectangleLabels></View>"
    answer = client.post("/setup", json={"schema": config, "project": "5.1"})
    assert answer.status_code == 400 and "more than the" in answer.json["error"]


def test_an_extreme_aspect_ratio_is_refused_without_a_traceback(caplog):
    import io

    from PIL import Image

    from active_learning.images import ImageError, decode

    buffer = io.BytesIO()
    Image.new("RGB", (65500, 1)).save(buffer, format="PNG")
    with pytest.raises(ImageError, match="65500x1 pixels: sides more than 100:1 apart"):
        decode("/data/upload/5/line.png", buffer.getvalue(), max_pixels=100_000_000)
