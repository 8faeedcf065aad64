"""Against a real Label Studio 1.23.2: recovering missed webhooks with ``sync_project``, personal access
tokens, the image cache, and keeping the project's model_version in step."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from active_learning.images import ImageCache, ImageFetcher, cache_labeled_images
from active_learning.tools.importing import import_csv
from active_learning.labelstudio.client import LabelStudioAuth, LabelStudioClient, LabelStudioError
from active_learning.labelstudio.sync import sync_project
from active_learning.settings import Settings
from active_learning.store import Store

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image"><Label value="cat"/><Label value="dog"/></RectangleLabels></View>'
)


def _png(color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, "PNG")
    return out.getvalue()


def _box(label: str, x: float) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 64,
             "original_height": 48, "value": {"x": x, "y": 10, "width": 25, "height": 50, "rotation": 0,
                                              "rectanglelabels": [label]}}]


@pytest.fixture(scope="module")
def project(label_studio) -> dict:
    """A project with three uploaded images."""
    body = {"title": "store-sync", "label_config": LABEL_CONFIG}
    project = label_studio.api("POST", "/api/projects", json=body).json()
    files = {f"f{i}": (f"img{i}.png", _png(color), "image/png") for i, color in enumerate(("red", "green", "blue"))}
    label_studio.api("POST", f"/api/projects/{project['id']}/import", files=files)
    tasks = label_studio.api("GET", f"/api/tasks?project={project['id']}").json()["tasks"]
    return {"id": project["id"], "tasks": sorted(t["id"] for t in tasks)}


def _store_view(store: Store, project_id: int) -> dict[int, tuple]:
    return {a.id: (a.task_id, a.was_cancelled, [b["label"] for b in a.boxes]) for a in store.annotations.of_project(project_id)}


def _ls_view(label_studio, project_id: int) -> dict[int, tuple]:
    view = {}
    for task in label_studio.api("GET", f"/api/tasks?project={project_id}&fields=all").json()["tasks"]:
        for a in task["annotations"]:
            labels = [label for r in a["result"] for label in r["value"].get("rectanglelabels", [])]
            view[a["id"]] = (task["id"], a["was_cancelled"], labels)
    return view


def test_sync_recovers_everything_missed_while_down(label_studio, project: dict, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'groundloop.db'}")
    client = LabelStudioClient(label_studio.url, label_studio.api_key)
    pid, (t1, t2, t3) = project["id"], project["tasks"]
    first = label_studio.api("POST", f"/api/tasks/{t1}/annotations", json={"result": _box("cat", 10)}).json()
    doomed = label_studio.api("POST", f"/api/tasks/{t2}/annotations", json={"result": _box("dog", 10)}).json()
    sync_project(store, client, pid)
    assert _store_view(store, pid) == _ls_view(label_studio, pid)

    # Seed labels imported from a CSV live only in the store: no sync may take them for deleted.
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "seed.png").write_bytes(_png("white"))
    (tmp_path / "seed.csv").write_text("label_name,bbox_x1,bbox_y1,bbox_x2,bbox_y2,image_name,image_width,image_height\n"
                                       "cat,5,5,30,30,seed.png,64,48\n")
    seed_settings = Settings(data_dir=tmp_path)
    import_csv(store, ImageCache(seed_settings), pid, tmp_path / "seed.csv", tmp_path / "seed")
    (imported,) = [a.id for a in store.annotations.of_project(pid) if a.id < 0]

    # The backend is down: an update, a new annotation, a skip and a deletion happen meanwhile.
    label_studio.api("PATCH", f"/api/annotations/{first['id']}", json={"result": _box("dog", 40)})
    label_studio.api("POST", f"/api/tasks/{t2}/annotations", json={"result": _box("cat", 50)})
    label_studio.api("POST", f"/api/tasks/{t3}/annotations", json={"result": [], "was_cancelled": True})
    label_studio.api("DELETE", f"/api/annotations/{doomed['id']}")

    result = sync_project(store, client, pid)

    assert {k: v for k, v in _store_view(store, pid).items() if k != imported} == _ls_view(label_studio, pid)
    assert (result.tasks, result.annotations, result.annotations_deleted) == (3, 3, 1)
    assert not store.annotations.get(imported).deleted
    assert store.annotations.get(doomed["id"]).deleted
    assert store.annotations.get(first["id"]).boxes[0]["box"] == [25.6, 4.8, 41.6, 28.8]
    assert sorted(t.task_id for t in store.tasks.labeled(pid)) == sorted([imported, t1, t2])  # a skip is no label
    assert store.projects.schema(pid).classes[0].name == "cat"

    # Images of labeled tasks are cached, so training does not need Label Studio.
    settings = Settings(data_dir=tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.api_key)
    cache = ImageCache(settings)
    assert cache_labeled_images(store, cache, pid) == []
    for task in store.tasks.labeled(pid):
        assert task.image_sha256 and cache.path_for(task.image_sha256).is_file()
        assert (task.width, task.height) == (64, 48)
    store.close()


def test_personal_access_token_is_exchanged_and_refreshed(label_studio, project: dict, tmp_path: Path) -> None:
    pat = label_studio.api("POST", "/api/token/").json()["token"]
    image = label_studio.api("GET", f"/api/tasks/{project['tasks'][0]}").json()["data"]["image"]
    as_bearer = requests.get(label_studio.url + image, headers={"Authorization": f"Bearer {pat}"}, timeout=30)
    assert as_bearer.status_code == 401  # the PAT itself is no access token

    settings = Settings(data_dir=tmp_path, label_studio_url=label_studio.url, label_studio_api_key=pat)
    fetcher = ImageFetcher(settings)
    assert fetcher.fetch(image).width == 64
    first_access = fetcher.auth.header()

    fetcher.auth._expires_at = time.time()  # as if 300 s had passed: the next request refreshes first
    time.sleep(1)  # access tokens carry whole-second times; a refresh within the same second may repeat one
    assert fetcher.fetch(image).height == 48
    assert fetcher.auth.header() != first_access and fetcher.auth.header().startswith("Bearer ")

    with pytest.raises(LabelStudioError, match="refused the personal access token"):
        LabelStudioAuth(label_studio.url, pat[:-4] + "AAAA").header()


def test_project_model_version_is_set(label_studio, project: dict) -> None:
    client = LabelStudioClient(label_studio.url, label_studio.api_key)
    with pytest.raises(LabelStudioError, match="Model version doesn't exist"):  # no predictions of it yet
        client.set_project_model_version(project["id"], "groundloop-p1-v3")

    label_studio.api("POST", "/api/predictions", json={"task": project["tasks"][0], "result": [], "score": 0.5,
                                                       "model_version": "groundloop-p1-v3"})
    client.set_project_model_version(project["id"], "groundloop-p1-v3")
    assert label_studio.api("GET", f"/api/projects/{project['id']}").json()["model_version"] == "groundloop-p1-v3"
