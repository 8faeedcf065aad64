"""Fixture plugin (registered in tests/conftest.py): the synthetic shapes of the training tests' project and a
media server serving them as Label Studio would. Used by tests/training and tests/hardening/test_worker_faults.py;
the helpers that go with them are in tests/support/training.py."""

from __future__ import annotations

import io
from typing import Iterator

import pytest

from model.synthetic import make_shapes_dataset
from tests.support.media import media_server
from tests.support.training import PROJECT, TOKEN


@pytest.fixture(scope="session")
def shapes():
    """80 synthetic images with their true boxes (fixed seed)."""
    return make_shapes_dataset(80, seed=11)


@pytest.fixture(scope="session")
def media_url(shapes) -> Iterator[str]:
    """Serves ``/data/upload/7/<i>.png`` like Label Studio's media, only with the test token."""
    pngs = {}
    for i, sample in enumerate(shapes):
        buffer = io.BytesIO()
        sample.image.save(buffer, format="PNG")
        pngs[f"/data/upload/{PROJECT}/{i}.png"] = buffer.getvalue()

    with media_server(pngs.get, TOKEN) as url:
        yield url
