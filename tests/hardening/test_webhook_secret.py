"""The webhook secret against a REAL Label Studio: a webhook given the header (``PATCH /api/webhooks/{id}`` with
``headers``) reaches the store; the same event from a webhook without it is refused with 401."""

from __future__ import annotations

import re

import pytest

from active_learning.settings import Settings
from active_learning.store import Store
from tests.support.backend import CONFIG, groundloop_serve, png_bytes, wait_for

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

SECRET = "a-long-random-webhook-secret"


def test_label_studio_webhook_with_the_secret_header_is_accepted_and_without_refused(
        tmp_path, small_model_dir, label_studio, figures):
    ls = label_studio
    flags = ["--no-worker", "--model", str(small_model_dir), "--image-size", "128", "--webhook-secret", SECRET,
             "--label-studio-url", ls.url, "--label-studio-api-key", ls.api_key]
    with groundloop_serve(tmp_path, *flags) as server:
        project = ls.api("POST", "/api/projects", json={"title": "secret", "label_config": CONFIG}).json()
        pid = project["id"]
        ls.api("POST", f"/api/projects/{pid}/import", files={"a": ("a.png", png_bytes((64, 48), 1), "image/png")})
        (task,) = ls.api("GET", f"/api/tasks?project={pid}").json()["tasks"]
        hooks = [ls.api("POST", "/api/webhooks", json={
            "project": pid, "url": server.url + "/webhook", "send_payload": True, "send_for_all_actions": False,
            "actions": ["ANNOTATION_CREATED"]}).json() for _ in range(2)]
        # Label Studio 1.23.2 resets a webhook's actions on a PATCH that does not name them: name them again
        ls.api("PATCH", f"/api/webhooks/{hooks[0]['id']}", json={
            "headers": {"X-Groundloop-Webhook-Secret": SECRET}, "actions": ["ANNOTATION_CREATED"]})
        stored = ls.api("GET", f"/api/webhooks/{hooks[0]['id']}").json()
        assert stored["headers"] == {"X-Groundloop-Webhook-Secret": SECRET}, stored
        assert stored["actions"] == ["ANNOTATION_CREATED"], stored

        region = {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 64,
                  "original_height": 48, "value": {"x": 10, "y": 10, "width": 50, "height": 50, "rotation": 0,
                                                   "rectanglelabels": ["cat"]}}
        annotation = ls.api("POST", f"/api/tasks/{task['id']}/annotations", json={"result": [region]}).json()

        def webhook_statuses() -> list[str]:
            return re.findall(r'"POST /webhook HTTP/1.1" (\d{3})', server.log_path.read_text(errors="replace"))

        statuses = wait_for(lambda: len(webhook_statuses()) >= 2 and webhook_statuses(), timeout=60,
                            what="both Label Studio webhooks")
        assert sorted(statuses) == ["200", "401"]
        store = Store.from_settings(Settings(data_dir=tmp_path))
        assert store.annotations.get(annotation["id"]).boxes[0]["label"] == "cat"
        store.close()
    figures["label_studio_webhook_secret"] = {"with_header": "200", "without_header": "401"}
