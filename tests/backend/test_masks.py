"""Masks through /predict: Grounding DINO's boxes prompt the segmenter (the tiny offline SAM, loaded from its
``save_pretrained`` directory), brush and polygon controls get their own kind of region, smart tools are answered
with one mask of the label the annotator chose, and a segmenter that cannot load costs the tasks, not the server.

Both models have random weights: the tests assert what holds for any weights (region kinds and controls, labels
from the config, masks decodable at the image's size, polygons inside the image, one answer per task).
"""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from active_learning.labelstudio.config import parse_label_config
from active_learning.serving.jobs import make_job
from tests.support.backend import IMAGE_SIZE

MIXED = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="boxes" toName="image"><Label value="cat"/><Label value="dog"/></RectangleLabels>'
    '<BrushLabels name="brush" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>'
    '<PolygonLabels name="outline" toName="image"><Label value="cat"/></PolygonLabels>'
    "</View>"
)
SMART = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="brush" toName="image"><Label value="banana"/><Label value="orange"/></BrushLabels>'
    '<KeyPointLabels name="click" toName="image" smart="true"><Label value="banana" smart="true"/>'
    '<Label value="orange" smart="true"/></KeyPointLabels>'
    '<RectangleLabels name="box" toName="image" smart="true"><Label value="banana"/><Label value="orange"/>'
    "</RectangleLabels></View>"
)
TASKS = [{"id": i, "data": {"image": f"/data/upload/9/{i}.png"}} for i in (1, 2, 3)]
WIDTH, HEIGHT = IMAGE_SIZE


@pytest.fixture
def mask_client(make_client, small_segmenter_dir):
    return make_client(segmenter=str(small_segmenter_dir), max_detections=8)


def predict(client, config: str, tasks=TASKS, **params) -> list:
    answer = client.post("/predict", json={"tasks": tasks, "label_config": config, "project": "9.1",
                                           "params": params})
    assert answer.status_code == 200, answer.json
    return answer.json["results"]


def decoded(region: dict) -> np.ndarray:
    width, height = region["original_width"], region["original_height"]
    return decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0


def test_each_control_of_a_mixed_config_gets_its_own_kind_of_region(mask_client):
    client, _ = mask_client
    results = predict(client, MIXED)
    assert len(results) == len(TASKS) and all(isinstance(p, dict) for p in results)
    regions = [r for p in results for r in p["result"]]
    kinds = {r["from_name"]: r["type"] for r in regions}
    assert kinds == {"boxes": "rectanglelabels", "brush": "brushlabels", "outline": "polygonlabels"}
    for r in regions:
        assert r["to_name"] == "image" and (r["original_width"], r["original_height"]) == IMAGE_SIZE
        assert r["value"][r["type"]][0] in ({"cat"} if r["from_name"] == "outline" else {"cat", "dog"})
    for brush in (r for r in regions if r["type"] == "brushlabels"):
        mask = decoded(brush)
        assert mask.shape == (HEIGHT, WIDTH) and mask.any()
    for polygon in (r for r in regions if r["type"] == "polygonlabels"):
        points = np.array(polygon["value"]["points"])
        assert len(points) >= 3 and ((0 <= points) & (points <= 100)).all()


def test_box_projects_never_load_the_segmenter_and_keep_their_cache_keys(make_client, settings, tmp_path):
    client, _ = make_client(segmenter=str(tmp_path / "no-such-segmenter"))
    boxes_only = MIXED.replace('<BrushLabels name="brush" toName="image"><Label value="cat"/><Label value="dog"/>'
                               "</BrushLabels>", "").replace('<PolygonLabels name="outline" toName="image">'
                                                             '<Label value="cat"/></PolygonLabels>', "")
    results = predict(client, boxes_only)
    assert all(p["result"] for p in results)  # boxes served although the segmenter would not load

    schema = parse_label_config(boxes_only)
    assert make_job(settings, schema).params_key == make_job(
        settings.__class__(**{**settings.__dict__, "segmenter": "other/sam"}), schema).params_key
    masks = parse_label_config(MIXED)
    other = settings.__class__(**{**settings.__dict__, "segmenter": "other/sam"})
    assert make_job(settings, masks).params_key != make_job(other, masks).params_key  # the segmenter changes masks


def test_a_segmenter_that_cannot_load_costs_the_tasks_not_the_server(make_client, tmp_path, caplog):
    client, predictor = make_client(segmenter=str(tmp_path / "no-such-segmenter"))
    assert predict(client, MIXED) == [[], [], []]  # nothing stored: Label Studio asks again once it is fixed
    assert "no-such-segmenter" in caplog.text and "GROUNDLOOP_SEGMENTER" in caplog.text
    assert predictor.metrics.snapshot()["failures"] == 3


def _click(x: float, y: float, label: str, positive: bool = True) -> dict:
    return {"from_name": "click", "to_name": "image", "type": "keypointlabels", "original_width": WIDTH,
            "original_height": HEIGHT, "is_positive": positive,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}


def _box(label: str) -> dict:
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": WIDTH,
            "original_height": HEIGHT, "value": {"x": 10, "y": 20, "width": 50, "height": 40, "rotation": 0,
                                                  "rectanglelabels": [label]}}


@pytest.mark.parametrize("drawn", [[_click(40, 50, "orange"), _click(70, 20, "orange", positive=False)],
                                   [_box("orange")], [_box("orange"), _click(30, 40, "orange")]],
                         ids=["clicks", "box", "box and click"])
def test_a_smart_prompt_is_answered_with_one_mask_of_the_chosen_label(mask_client, store, drawn):
    client, _ = mask_client
    [answer] = predict(client, SMART, tasks=TASKS[:1], context={"result": drawn})
    [region] = answer["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "brush"
    assert region["value"]["brushlabels"] == ["orange"]
    assert decoded(region).shape == (HEIGHT, WIDTH)
    assert store.predictions.served(TASKS[0]["id"]) == []  # shown by Label Studio, stored by neither


def test_smart_tools_are_prompts_not_pre_annotated_controls():
    schema = parse_label_config(SMART)
    assert [c.name for c in schema.controls] == ["brush"]
    assert {(t.name, t.kind) for t in schema.smart_tools} == {("click", "keypointlabels"), ("box", "rectanglelabels")}


def test_a_malformed_smart_prompt_is_a_400_naming_the_field(mask_client):
    client, _ = mask_client
    bad = _click(40, 50, "orange")
    bad["value"]["x"] = "left"
    answer = client.post("/predict", json={"tasks": TASKS[:1], "label_config": SMART, "project": "9.1",
                                           "params": {"context": {"result": [bad]}}})
    assert answer.status_code == 400 and "context.result[0].value.x" in answer.json["error"]


def test_a_typed_prompt_gives_boxes_then_masks(mask_client):
    client, _ = mask_client
    config = SMART.replace("</View>", '<TextArea name="prompt" toName="image" editable="true"/></View>')
    typed = {"from_name": "prompt", "to_name": "image", "type": "textarea", "value": {"text": ["kiwi, orange"]}}
    [answer] = predict(client, config, tasks=TASKS[:1], context={"result": [typed]})
    regions = answer["result"]
    assert regions and {r["type"] for r in regions} == {"brushlabels"}
    assert {r["value"]["brushlabels"][0] for r in regions} <= {"kiwi", "orange"}  # a typed phrase comes back as typed
    assert all(decoded(r).any() for r in regions)
