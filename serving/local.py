"""A local Ray + Serve on 127.0.0.1 for the demo, the tests and the benchmarks (public Ray APIs only)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def import_ray_quietly() -> None:
    """Import ray.serve once with its own import-time warnings silenced: Ray 2.60 passes a
    pydantic-v1-style extra argument to `Field` (PydanticDeprecatedSince20), which the test suite's
    `filterwarnings = error` would turn into a collection error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using extra keyword arguments on `Field`")
        import ray.serve  # noqa: F401


@contextlib.contextmanager
def local_serve(http_port: int, num_cpus: int = 4, quiet: bool = False, fast_path: bool = True) -> Iterator[None]:
    """One local Ray + Serve on 127.0.0.1; always shut down, whatever happens inside. `quiet` keeps
    Ray's and Serve's INFO lines out of this process's output (warnings and errors still show).
    `fast_path`: Serve's HAProxy ingress and gRPC between deployments (serving.fast_path), which
    the deploy files use too; False runs Serve's default path (the overhead benchmark's baseline)."""
    import_ray_quietly()
    import ray
    from ray import serve

    from serving.fast_path import environment, path_env

    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    if quiet:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    with environment(path_env(fast_path, own_ports=True)):
        # Read by the Ray workers this starts (controller, ingress, replicas) when they import Serve;
        # this process imported Serve already and keeps its defaults, so its handles still work
        # outside an event loop (tests and benchmarks call deployments from plain threads).
        with _ray_and_serve(ray, serve, http_port, num_cpus, quiet):
            yield


@contextlib.contextmanager
def _ray_and_serve(ray: Any, serve: Any, http_port: int, num_cpus: int, quiet: bool) -> Iterator[None]:
    ray.init(
        # "local": always a new instance of our own. Without an address Ray attaches to any cluster
        # already running on this machine (e.g. one a two-node test started with `ray start`), and
        # dies with it when that cluster is stopped.
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING if quiet else logging.INFO,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        yield
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()

