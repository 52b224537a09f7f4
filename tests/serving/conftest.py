"""Shared parts for serving tests: Ray imported quietly, one Serve instance for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serving.testing import acquire_shared_serve, import_ray_quietly, release_shared_serve

import_ray_quietly()


@pytest.fixture(scope="session")
def serve_port() -> Iterator[int]:
    port = acquire_shared_serve()
    try:
        yield port
    finally:
        release_shared_serve()
