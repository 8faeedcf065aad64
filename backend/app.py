"""The HTTP face of the backend: the routes Label Studio calls, kept thin; the work is in ``Predictor``.

Every answer is JSON, errors included: a malformed request gets 400 and a one-line message, never a traceback.
The one exception: ``GET /status`` answers a browser (``Accept: text/html``) with an HTML page of the same data.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from active_learning.settings import Settings
from backend.predictor import Predictor, RequestError
from backend.status_page import render_status_page

log = logging.getLogger(__name__)


def create_app(settings: Settings, predictor: Predictor | None = None) -> Flask:
    """The Flask app; without ``predictor`` it loads the starting model named by ``settings`` (once, here)."""
    predictor = predictor or Predictor.from_settings(settings)
    app = Flask(__name__)
    app.config["predictor"] = predictor
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes  # larger bodies: 413, never read into memory
    predict_slots = threading.BoundedSemaphore(predict_slot_count(settings))

    @app.before_request
    def _start() -> Response | None:
        g.started = time.monotonic()
        if settings.basic_auth_user and not _authorized(settings):
            return _error("authentication required", 401, {"WWW-Authenticate": 'Basic realm="groundloop"'})
        return None

    @app.after_request
    def _observe(response: Response) -> Response:
        if request.url_rule is not None:
            predictor.metrics.observe(request.url_rule.rule, time.monotonic() - g.started)
        return response

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify(predictor.health())

    @app.post("/setup")
    def setup():
        return jsonify(predictor.setup(_json_object()))

    @app.post("/predict")
    def predict():
        if not predict_slots.acquire(blocking=False):  # a queue would only grow; the caller retries
            predictor.metrics.count("busy_refusals")
            return _error(f"busy: {predict_slot_count(settings)} predictions already running, retry later", 503,
                          {"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})
        try:
            return jsonify(predictor.predict(_json_object()))
        finally:
            predict_slots.release()

    @app.post("/webhook")
    def webhook():
        if settings.webhook_secret and not _has_webhook_secret(settings):
            return _error(f"webhook refused: missing or wrong {WEBHOOK_SECRET_HEADER} header", 401)
        return jsonify(predictor.webhook(_json_object()))

    @app.get("/metrics")
    def metrics():
        return jsonify(predictor.metrics.snapshot())

    @app.get("/status")
    def status():
        if _wants_html():
            return render_status_page(predictor.status(), settings)
        return jsonify(predictor.status())

    @app.errorhandler(RequestError)
    def bad_request(exc: RequestError):
        log.warning("%s %s: %s", request.method, request.path, exc)
        return _error(str(exc), 400)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def crash(exc: Exception):
        log.exception("%s %s failed", request.method, request.path)
        predictor.metrics.count("failures")
        return _error(f"internal error: {type(exc).__name__}", 500)

    return app


BUSY_RETRY_AFTER_SECONDS = 5


def predict_slot_count(settings: Settings) -> int:
    """/predict calls worked on at once: ``max_pending_predicts``, but always fewer than the threads, so that a
    thread is free to answer webhooks, /health and the 503 itself at once."""
    return max(1, min(settings.max_pending_predicts, settings.threads - 1))
WEBHOOK_SECRET_HEADER = "X-Groundloop-Webhook-Secret"
"""Set it in Label Studio's webhook ``headers`` (``PATCH /api/webhooks/{id}``) when ``webhook_secret`` is set."""


def _json_object() -> dict:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # JSON nested deeper than Python's parser recurses
        raise RequestError("the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


def _wants_html() -> bool:
    """``?format=html|json`` decides; else HTML only if the client prefers it to JSON (browsers; not curl's */*)."""
    if request.args.get("format") in ("html", "json"):
        return request.args["format"] == "html"
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _authorized(settings: Settings) -> bool:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    # compare both, always: how long it takes tells nothing about which one was wrong
    user_ok = hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
    pass_ok = hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode())
    return user_ok and pass_ok


def _has_webhook_secret(settings: Settings) -> bool:
    sent = request.headers.get(WEBHOOK_SECRET_HEADER, "")
    return hmac.compare_digest(sent.encode(), settings.webhook_secret.encode())


def _error(message: str, status: int, headers: dict | None = None) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    response.headers.update(headers or {})
    return response
