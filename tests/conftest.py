"""The test session's shared parts: Ray imported quietly before any test module imports it, and one
local Ray + Serve for every test that asks for `serve_port` (started on first use, public APIs only),
and one S3 endpoint (moto's server) for every test that asks for `s3_server`."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from serving.local import import_ray_quietly
from tests.support.s3 import S3Server, moto_server
from tests.support.serve import acquire_shared_serve, release_shared_serve

import_ray_quietly()


@pytest.fixture(scope="session")
def serve_port() -> Iterator[int]:
    port = acquire_shared_serve()
    try:
        yield port
    finally:
        release_shared_serve()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 endpoint (moto's server in its own process) for the session, with its endpoint and
    credentials in the environment that s3fs reads. Skipped only where the dev extra is not
    installed (it brings moto[server] and s3fs); in CI, where `make test` installs it, a missing
    module fails instead, so that the object-store tests can never silently not run."""
    for module in ("moto", "s3fs"):
        if importlib.util.find_spec(module) is None:
            why = f"{module} is not installed; pip install -e '.[store,dev]'"
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
    with moto_server() as server, pytest.MonkeyPatch.context() as env:
        for name, value in server.env.items():
            env.setenv(name, value)
        yield server
