"""Batched, pipelined prediction (``serving.batching``): images fetched ahead of the model and detected in batches
give the same regions as one image at a time, one answer per task in task order, failures mixed in; a failing
image in a batch costs only itself; the time budget holds; the decoded images held stay within their bound."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from active_learning.images import FetchedImage, ImageFetcher
from active_learning.images.slots import image_slots
from active_learning.serving.batching import predict_batched
from active_learning.labelstudio.config import parse_label_config
from active_learning.serving.jobs import make_job
from active_learning.serving.pool import ModelPool
from active_learning.settings import Settings
from active_learning.store import Store
from backend.app import create_app
from backend.predictor import Predictor
from tests.support.backend import CONFIG, TOKEN, png_bytes, wait_for
from tests.support.media import media_server

WIDE, TALL = (64, 48), (48, 64)
"""Two image shapes: resized to different input shapes, so a batch holds images of both."""


@pytest.fixture(scope="module")
def images_url() -> Iterator[str]:
    """``/data/upload/wide-<n>.png`` and ``tall-<n>.png``: distinct PNGs; ``garbage.png``: not an image; any other
    path: 404."""
    def lookup(path: str) -> bytes | None:
        name = path.rsplit("/", 1)[-1]
        if name == "garbage.png":
            return b"these bytes are no image"
        shape, _, number = name.removesuffix(".png").partition("-")
        if shape in ("wide", "tall") and number.isdigit():
            return png_bytes(WIDE if shape == "wide" else TALL, seed=int(number) + (100 if shape == "tall" else 0))
        return None

    with media_server(lookup, TOKEN) as url:
        yield url


def _client(settings: Settings, detector, tmp_path: Path, name: str, **overrides):
    """A backend with its own store (so nothing is answered from another's predictions)."""
    s = replace(settings, data_dir=tmp_path / name, **overrides)
    store = Store.from_settings(s)
    predictor = Predictor(s, ModelPool(s, store, starting=detector), store, ImageFetcher(s))
    return create_app(s, predictor).test_client(), store


def _tasks(*names: str) -> list[dict]:
    return [{"id": n, "data": {"image": f"/data/upload/{name}"} if name else {}} for n, name in enumerate(names, 1)]


def _predict(client, tasks: list[dict]) -> list:
    response = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG, "project": "7.1795301709"})
    assert response.status_code == 200, response.json
    return response.json["results"]


def _assert_same(batched: dict, alone: dict) -> None:
    assert batched["score"] == pytest.approx(alone["score"], abs=1e-4)
    assert len(batched["result"]) == len(alone["result"]) > 0
    for one, other in zip(batched["result"], alone["result"]):
        assert one["value"]["rectanglelabels"] == other["value"]["rectanglelabels"]
        for key in ("x", "y", "width", "height"):
            assert one["value"][key] == pytest.approx(other["value"][key], abs=1e-3)
        assert one["score"] == pytest.approx(other["score"], abs=1e-4)


def test_batched_prediction_gives_the_regions_of_one_image_at_a_time(settings, detector, tmp_path, images_url):
    names = [f"{shape}-{n}.png" for n in range(4) for shape in ("wide", "tall")]
    alone, alone_store = _client(settings, detector, tmp_path, "alone", label_studio_url=images_url,
                                 predict_batch_size=1, prefetch_images=0)
    batched, batched_store = _client(settings, detector, tmp_path, "batched", label_studio_url=images_url,
                                     predict_batch_size=4, prefetch_images=2)
    one_by_one = _predict(alone, _tasks(*names))
    in_batches = _predict(batched, _tasks(*names))
    assert len(in_batches) == len(one_by_one) == len(names)
    for mine, theirs in zip(in_batches, one_by_one):
        _assert_same(mine, theirs)
    assert len({str(answer["result"]) for answer in in_batches}) == len(names)  # each task got its own image's
    assert batched.get("/metrics").json["predictions"] == len(names)
    alone_store.close()
    batched_store.close()


def test_one_answer_per_task_in_order_with_failures_mixed_in(settings, detector, tmp_path, images_url):
    names = ["wide-0.png", "garbage.png", "tall-0.png", "missing.png", "", "wide-1.png", "tall-1.png", "wide-2.png"]
    good = [n for n, name in enumerate(names) if name.startswith(("wide", "tall"))]
    alone, alone_store = _client(settings, detector, tmp_path, "alone", label_studio_url=images_url,
                                 predict_batch_size=1, prefetch_images=0)
    batched, batched_store = _client(settings, detector, tmp_path, "batched", label_studio_url=images_url,
                                     predict_batch_size=3, prefetch_images=2)
    expected = _predict(alone, _tasks(*[names[n] for n in good]))
    answers = _predict(batched, _tasks(*names))
    assert len(answers) == len(names)
    for n, answer in enumerate(answers):
        if n in good:
            _assert_same(answer, expected[good.index(n)])
        else:
            assert answer == []
    metrics = batched.get("/metrics").json
    assert (metrics["predictions"], metrics["failures"]) == (len(good), len(names) - len(good))
    alone_store.close()
    batched_store.close()


def _job(settings: Settings):
    return make_job(settings, parse_label_config(CONFIG))


def _fetched(name: str, image: Image.Image) -> FetchedImage:
    return FetchedImage(url=f"/data/upload/{name}", sha256=name, image=image, width=image.width, height=image.height)


def test_an_image_the_detector_fails_on_costs_only_itself(settings, detector):
    s = replace(settings, predict_batch_size=4, prefetch_images=1)
    images = {"a": Image.new("RGB", WIDE, (10, 200, 30)), "empty": Image.new("RGB", (0, 0)),
              "b": Image.new("RGB", WIDE, (200, 20, 90))}
    outcomes = list(predict_batched(detector, _job(s), list(images), lambda name: _fetched(name, images[name]), s))
    assert [outcome.item for outcome in outcomes] == list(images)
    assert [outcome.prediction is not None for outcome in outcomes] == [True, False, True]
    assert outcomes[1].error.startswith("detection failed on /data/upload/empty")


def test_no_image_is_fetched_once_the_deadline_has_passed(settings, detector):
    s = replace(settings, predict_batch_size=2, prefetch_images=1)
    loaded = []

    def load(name: str) -> FetchedImage:
        loaded.append(name)
        return _fetched(name, Image.new("RGB", WIDE))

    outcomes = list(predict_batched(detector, _job(s), ["a", "b", "c"], load, s, deadline=time.monotonic() - 1))
    assert [(outcome.item, outcome.over_budget, outcome.prediction) for outcome in outcomes] == \
        [("a", True, None), ("b", True, None), ("c", True, None)]
    assert loaded == []


def _all_slots_free(s: Settings) -> bool:
    slots, limit = image_slots(s), s.predict_batch_size + s.prefetch_images
    taken = sum(slots.take(waiting=False) for _ in range(limit))
    for _ in range(taken):
        slots.give()
    return taken == limit


def test_a_caller_that_stops_early_gives_its_images_back(settings, detector):
    s = replace(settings, predict_batch_size=3, prefetch_images=4)  # slots no other test uses
    outcomes = predict_batched(detector, _job(s), [f"i{n}" for n in range(12)],
                               lambda name: _fetched(name, Image.new("RGB", WIDE)), s)
    assert next(outcomes).prediction is not None
    outcomes.close()
    wait_for(lambda: _all_slots_free(s), timeout=10, what="every image slot given back")


def test_concurrent_callers_hold_at_most_batch_plus_prefetch_images(settings, detector):
    s = replace(settings, predict_batch_size=2, prefetch_images=1)
    live, most, lock = [0], [0], threading.Lock()
    answered: dict[str, list] = {}

    def load(name: str) -> FetchedImage:
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        time.sleep(0.02)
        return _fetched(name, Image.new("RGB", WIDE, (len(name) * 20, 50, 50)))

    def caller(prefix: str) -> None:
        answered[prefix] = []
        for outcome in predict_batched(detector, _job(s), [f"{prefix}{n}" for n in range(6)], load, s):
            answered[prefix].append((outcome.item, outcome.prediction is not None))
            with lock:
                live[0] -= 1

    threads = [threading.Thread(target=caller, args=(prefix,)) for prefix in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert {prefix: [item for item, _ in done] for prefix, done in answered.items()} == \
        {prefix: [f"{prefix}{n}" for n in range(6)] for prefix in "abc"}
    assert all(ok for done in answered.values() for _, ok in done)
    assert 1 < most[0] <= s.predict_batch_size + s.prefetch_images
    assert _all_slots_free(s)
