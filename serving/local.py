"""A local Ray + Serve on 127.0.0.1 for the demo, the tests and the benchmarks (public Ray APIs only)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from collections.abc import Iterator


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
def local_serve(http_port: int, num_cpus: int = 4, quiet: bool = False) -> Iterator[None]:
    """One local Ray + Serve on 127.0.0.1; always shut down, whatever happens inside. `quiet` keeps
    Ray's and Serve's INFO lines out of this process's output (warnings and errors still show)."""
    import_ray_quietly()
    import ray
    from ray import serve

    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    if quiet:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
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
            serve.shutdown()  # type: ignore[no-untyped-call]  # unannotated in Ray
        finally:
            ray.shutdown()

