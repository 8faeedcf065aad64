"""Talking to Label Studio: authentication, reading projects and tasks, pushing predictions, and setting the
project's ``model_version``.

Label Studio accepts two kinds of API key. A legacy key is sent as ``Authorization: Token <key>``. A personal
access token (PAT) is a JWT refresh token: it is exchanged at ``POST /api/token/refresh/`` for an access token
that lives 300 s and is sent as ``Authorization: Bearer <access>`` (the PAT itself as Bearer gets 401).
``LabelStudioAuth`` does both for plain ``requests`` calls (``images.ImageFetcher``'s downloads of task
images); ``LabelStudioClient`` wraps the SDK, which does the same for API calls.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from active_learning.settings import Settings


REFRESH_MARGIN_SECONDS = 30.0
"""Refresh the access token this long before it expires."""
ACCESS_TOKEN_SECONDS = 300.0
"""Label Studio's access-token lifetime, assumed when the token does not say."""


class LabelStudioError(Exception):
    """Label Studio refused or could not be reached; the message is one line."""


def is_personal_access_token(api_key: str) -> bool:
    """A PAT is a JWT (``header.payload.signature``); a legacy key is 40 hex characters."""
    return jwt_claims(api_key) is not None


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, unverified (Label Studio verifies; we only read ``exp``); None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # bad base64, bad UTF-8 and bad JSON are all ValueErrors
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioAuth(requests.auth.AuthBase):
    """``requests`` auth for Label Studio: ``Token <key>``, or a PAT exchanged for short-lived Bearer tokens.

    Thread-safe: one instance is shared by all of a server's threads, and only one of them refreshes.
    """

    def __init__(self, base_url: str, api_key: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.uses_pat = is_personal_access_token(api_key)
        self._access: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self.header()
        return request

    def header(self) -> str:
        if not self.uses_pat:
            return f"Token {self.api_key}"
        with self._lock:
            if self._access is None or time.time() > self._expires_at - REFRESH_MARGIN_SECONDS:
                self._refresh()
            return f"Bearer {self._access}"

    def _refresh(self) -> None:
        try:
            response = requests.post(f"{self.base_url}/api/token/refresh/", json={"refresh": self.api_key},
                                     timeout=self.timeout)
        except requests.RequestException as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.base_url} to refresh the access token: "
                                   f"{type(exc).__name__}") from None
        try:
            access = response.json().get("access") if response.ok else None
        except ValueError:  # not JSON: not Label Studio answering
            access = None
        if not isinstance(access, str):
            raise LabelStudioError(f"Label Studio refused the personal access token (HTTP {response.status_code} "
                                   "from /api/token/refresh/): check LABEL_STUDIO_API_KEY")
        claims = jwt_claims(access) or {}
        self._access = access
        self._expires_at = float(claims.get("exp") or time.time() + ACCESS_TOKEN_SECONDS)


@dataclass
class LabelStudioClient:
    """The Label Studio API, through label-studio-sdk (which handles both kinds of key itself)."""

    url: str
    api_key: str
    sdk: LabelStudio = field(init=False)

    def __post_init__(self) -> None:
        if not self.url or not self.api_key:
            raise LabelStudioError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must both be set")
        self.url = self.url.rstrip("/")
        self.sdk = LabelStudio(base_url=self.url, api_key=self.api_key)

    @classmethod
    def from_settings(cls, settings: Settings) -> "LabelStudioClient":
        return cls(settings.label_studio_url, settings.label_studio_api_key)

    def get_project(self, project_id: int) -> dict[str, Any]:
        return self.sdk.projects.get(id=project_id).model_dump(mode="json")

    def tasks_with_annotations(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with all its annotations (skips included)."""
        pager = self.sdk.tasks.list(project=project_id, fields="all", page_size=100)
        return [task.model_dump(mode="json") for task in pager]

    def unlabeled_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's tasks without any annotation (a skip counts as one)."""
        return [task for task in self.tasks_with_annotations(project_id) if not task.get("annotations")]

    def create_prediction(self, task_id: int, prediction: dict[str, Any]) -> None:
        """Store ``{"result", "score", "model_version"}`` as a prediction of the task in Label Studio."""
        try:
            self.sdk.predictions.create(task=task_id, result=prediction["result"], score=prediction["score"],
                                        model_version=prediction["model_version"])
        except ApiError as exc:
            raise LabelStudioError(f"Label Studio refused a prediction for task {task_id}: HTTP {exc.status_code} "
                                   f"{str(exc.body)[:200]}") from None

    def set_project_model_version(self, project_id: int, version: str) -> None:
        """Point the project at ``version``: Label Studio's uncertainty sampling only uses predictions of it.

        Label Studio accepts a version only once the project has predictions of it (or an ML backend titled
        so): store at least one prediction of the new version first.
        """
        try:
            self.sdk.projects.update(id=project_id, model_version=version)
        except ApiError as exc:
            errors = exc.body.get("validation_errors") if isinstance(exc.body, dict) else None
            reason = (errors or {}).get("model_version") or [f"HTTP {exc.status_code}"]
            raise LabelStudioError(f"Label Studio refused model_version {version!r} for project {project_id}: "
                                   f"{reason[0]}") from None
