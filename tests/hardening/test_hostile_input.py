"""Hostile input the existing tests (tests/backend/test_app.py, tests/store/test_images.py) do not cover: oversized
and mistyped bodies, huge batches, hostile image bytes, SSRF address forms, path traversal and odd label configs.
Each must get a clear 4xx or a logged, contained failure: never a 500, a traceback, file contents or the API key.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from typing import Iterator

import pytest
from PIL import Image

from active_learning.images import ImageError, ImageFetcher
from model.prompts import ClassSpec, build_prompts
from tests.support.backend import TOKEN
from tests.support.net import http_server

GOOD_PNG = io.BytesIO()
Image.new("RGB", (64, 48), (10, 200, 30)).save(GOOD_PNG, format="PNG")


def _bomb_png(side: int = 30_000) -> bytes:
    """A valid PNG header claiming ``side`` x ``side`` pixels, with a tiny compressed body: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 65536, 9))


HOSTILE_BODIES = {
    "/data/upload/1/text.png": b"this is not an image, just text that claims to be a PNG",
    "/data/upload/1/truncated.png": GOOD_PNG.getvalue()[: len(GOOD_PNG.getvalue()) // 2],
    "/data/upload/1/bomb.png": _bomb_png(),
    "/data/upload/1/empty.png": b"",
}


@pytest.fixture(scope="module")
def hostile_media() -> Iterator[tuple[str, list[str]]]:
    """Label Studio's media gone bad: serves the bodies above; any other path answers 404. Records every path."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.path)
            body = HOSTILE_BODIES.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    with http_server(Handler) as url:
        yield url, seen


def _predict(client, ls_request, images: list[str]):
    body = ls_request("predict_retrieve_predictions")
    body["tasks"] = [{"id": i + 1, "data": {"image": image}} for i, image in enumerate(images)]
    return client.post("/predict", json=body)


def _assert_contained(answer, caplog) -> None:
    """Not a crash, and nothing leaks: no traceback, no file contents, no API key in the answer or the logs."""
    assert answer.status_code < 500, answer.get_data(as_text=True)
    logs = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    for text in (answer.get_data(as_text=True), logs):
        assert "Traceback" not in text and "root:x:0:0" not in text and TOKEN not in text


def test_an_oversized_body_gets_413_with_a_json_message(make_client, ls_request, figures):
    client, _ = make_client(max_request_bytes=4096)
    body = ls_request("predict_retrieve_predictions")
    body["tasks"] = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(500)]
    answer = client.post("/predict", json=body)
    assert answer.status_code == 413 and "error" in answer.json
    assert client.post("/webhook", data=b"x" * 5000, content_type="application/json").status_code == 413
    figures.setdefault("hostile", []).append("oversized JSON body -> 413")


def test_hostile_images_cost_only_their_task(make_client, ls_request, hostile_media, caplog, figures):
    """Text, truncated, empty and decompression-bomb images: that task gets no prediction, the batch is answered."""
    url, seen = hostile_media
    client, predictor = make_client(label_studio_url=url)
    caplog.set_level(logging.INFO)
    answer = _predict(client, ls_request, list(HOSTILE_BODIES))
    _assert_contained(answer, caplog)
    assert answer.status_code == 200 and answer.json["results"] == [[]] * len(HOSTILE_BODIES)
    assert predictor.metrics.snapshot()["failures"] == len(HOSTILE_BODIES)
    assert "DecompressionBombError" in caplog.text  # refused by its header, before decoding the pixels
    figures.setdefault("hostile", []).extend(
        ["image that is text -> no prediction", "truncated PNG -> no prediction", "empty body -> no prediction",
         "decompression bomb (30000x30000 PNG, 1 KB) -> refused before decoding"])


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://[::1]:{port}/x.png", ()),
        ("http://[::1]:{port}/x.png", ("*",)),
        ("http://[::ffff:169.254.169.254]/latest/meta-data/", ()),
        ("http://[::ffff:169.254.169.254]/latest/meta-data/", ("*",)),
        ("http://[::ffff:127.0.0.1]:{port}/x.png", ("*",)),
        ("http://2852039166/latest/meta-data/", ()),  # 169.254.169.254 as one decimal number
        ("http://2852039166/latest/meta-data/", ("*",)),
        ("http://0251.0376.0251.0376/latest/meta-data/", ("*",)),  # octal
        ("http://0x7f.1:{port}/x.png", ("*",)),  # 127.0.0.1, hex and short form
        ("http://127.1:{port}/x.png", ("*",)),
        ("http://0.0.0.0:{port}/x.png", ("*",)),
        ("//evil.example/x.png", ()),  # protocol-relative: not Label Studio's
        ("gopher://127.0.0.1:{port}/", ("*",)),
        ("ftp://127.0.0.1:{port}/x.png", ("*",)),
    ],
)
def test_ssrf_address_forms_are_refused_before_connecting(settings, hostile_media, url, allowed):
    media_url, seen = hostile_media
    port = media_url.rsplit(":", 1)[1]
    before = len(seen)
    fetcher = ImageFetcher(replace(settings, label_studio_url="http://ls.invalid", allowed_image_hosts=allowed))
    with pytest.raises(ImageError, match="not allowed|non-public|only http"):
        fetcher.fetch(url.format(port=port))
    assert len(seen) == before  # no request reached the local server


def test_path_traversal_stays_a_request_to_label_studio(make_client, ls_request, hostile_media, caplog, figures):
    """Relative task URLs are only ever fetched from the Label Studio host, never read from the local disk."""
    url, seen = hostile_media
    client, _ = make_client(label_studio_url=url)
    caplog.set_level(logging.INFO)
    traversals = ["/data/local-files/?d=../../etc/passwd", "/data/../../../../etc/passwd",
                  "/data/local-files/?d=%2e%2e/%2e%2e/etc/passwd"]
    answer = _predict(client, ls_request, traversals)
    _assert_contained(answer, caplog)
    assert answer.json["results"] == [[], [], []]
    # asked of Label Studio's host (404 there; requests normalises the dots), never opened here; in any order, as
    # images are fetched ahead of the model, several at once
    assert sorted(seen[-3:]) == sorted(["/data/local-files/?d=../../etc/passwd", "/etc/passwd",
                                        "/data/local-files/?d=../../etc/passwd"])
    figures.setdefault("hostile", []).append("path traversal in task URLs -> asked of the LS host only, 404")


def test_a_huge_batch_is_answered_one_entry_per_task(client, ls_request, caplog, figures):
    caplog.set_level(logging.INFO)
    images = [f"http://169.254.169.254/{i}.png" for i in range(3000)]
    answer = _predict(client, ls_request, images)
    _assert_contained(answer, caplog)
    assert answer.status_code == 200 and answer.json["results"] == [[]] * len(images)
    figures.setdefault("hostile", []).append("batch of 3000 tasks with forbidden image URLs -> 200, 3000 empty")


def test_odd_and_unicode_class_names_and_300_classes(client, detector, ls_request, media, figures):
    names = ["猫", "chien 🐕", "a&b", "quote\"d", "x" * 300, "  spaced  ", "<tag>"]
    many = [f"class {i}" for i in range(300)]  # MAX_PHRASES: more is refused (test_validation.py)
    for labels in (names, many):
        xml_labels = "".join(f'<Label value="{_xml(name)}"/>' for name in labels)
        body = ls_request("predict_retrieve_predictions")
        body["label_config"] = (f'<View><Image name="image" value="$image"/><RectangleLabels name="label" '
                                f'toName="image">{xml_labels}</RectangleLabels></View>')
        body["tasks"] = body["tasks"][:1]
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200
        (prediction,) = answer.json["results"]
        assert prediction["result"], "thresholds of 0 give boxes"
        assert {r["value"]["rectanglelabels"][0] for r in prediction["result"]} <= set(labels)
    prompts = build_prompts([ClassSpec(name) for name in many], detector.processor.tokenizer,
                            detector.model.config.max_text_len)
    assert len(prompts) > 1, "300 classes do not fit one prompt: they are split"
    figures["classes_300_prompts"] = len(prompts)
    figures.setdefault("hostile", []).extend(["Unicode, markup and over-long class names -> boxes with those names",
                                              f"300 classes -> {len(prompts)} prompts, boxes from the 300 names"])


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


WRONG_VALUES = [None, "x", -1, [{}]]
ROUTES = {"setup": "/setup", "predict_retrieve_predictions": "/predict", "webhook_annotation_created": "/webhook",
          "webhook_annotation_updated": "/webhook", "webhook_annotations_deleted": "/webhook",
          "webhook_start_training": "/webhook"}


def test_every_field_of_every_captured_request_mistyped(client, ls_request, caplog, figures):
    """Each captured Label Studio body with one field (two levels deep) replaced by a wrong type: 200 or 4xx."""
    caplog.set_level(logging.INFO)
    tried, statuses = 0, {}
    for name, path in ROUTES.items():
        original = ls_request(name)
        for key, value in original.items():
            places = [(key, None)] + [(key, inner) for inner in value] if isinstance(value, dict) else [(key, None)]
            for outer, inner in places:
                for wrong in WRONG_VALUES:
                    body = ls_request(name)
                    if inner is None:
                        body[outer] = wrong
                    else:
                        body[outer][inner] = wrong
                    answer = client.post(path, json=body)
                    _assert_contained(answer, caplog)
                    tried += 1
                    statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
    assert tried > 1000 and set(statuses) <= {200, 400}
    figures["mistyped_requests"] = {"tried": tried, "statuses": statuses}
