"""The test session's shared parts: Ray imported quietly before any test module imports it, and one
local Ray + Serve for every test that asks for `serve_port` (started on first use, public APIs only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serving.local import import_ray_quietly
from tests.support.serve import acquire_shared_serve, release_shared_serve

import_ray_quietly()


@pytest.fixture(scope="session")
def serve_port() -> Iterator[int]:
    port = acquire_shared_serve()
    try:
        yield port
    finally:
        release_shared_serve()
