"""A local Ray + Serve on 127.0.0.1 for the demo, the tests and the benchmarks (public Ray APIs only)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
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
    from serving.haproxy_binary import nosplice_env

    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    if quiet:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    with contextlib.ExitStack() as stack:
        # HAProxy without splice (serving.haproxy_binary): it can miss a streaming client that leaves.
        haproxy = stack.enter_context(nosplice_env()) if fast_path else {}
        stack.enter_context(environment(path_env(fast_path, own_ports=True) | haproxy))
        stack.enter_context(_builds_for_haproxy(fast_path))
        # Read by the Ray workers this starts (controller, ingress, replicas) when they import Serve;
        # this process imported Serve already and keeps its defaults, so its handles still work
        # outside an event loop (tests and benchmarks call deployments from plain threads).
        with _ray_and_serve(ray, serve, http_port, num_cpus, quiet):
            yield


@contextlib.contextmanager
def _builds_for_haproxy(fast_path: bool) -> Iterator[None]:
    """`serve.run` builds an app in this process and checks it against this process's Serve
    settings, read when it imported Serve: an app with an ingress request router
    (serving.ingress.replica_chooser) is refused unless HAProxy is on here too. The one setting
    build_app reads (Ray 2.60, private) follows the workers' for as long as they run."""
    from ray.serve._private import build_app

    settings, name = vars(build_app), "RAY_SERVE_ENABLE_HA_PROXY"
    before = settings[name]
    settings[name] = fast_path
    try:
        yield
    finally:
        settings[name] = before


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



def run_routed(app: Any, *, http_port: int, name: str, route_prefix: str = "/", **kwargs: Any) -> Any:
    """`serve.run`, then `wait_until_routed`: an app that answers as soon as this returns."""
    from ray import serve

    handle = serve.run(app, name=name, route_prefix=route_prefix, **kwargs)
    wait_until_routed(http_port, route_prefix)
    return handle


def wait_until_routed(http_port: int, route_prefix: str = "/", timeout_s: float = 30.0) -> None:
    """Return once the HTTP ingress routes `route_prefix` to our app (its /healthz answers JSON with
    a status, 200 or 503). On Serve's fast path HAProxy learns a new route a moment after
    `serve.run` returns (it reloads its config in the background); a request in between gets
    HAProxy's own 404 or 503. TimeoutError after `timeout_s`."""
    url = f"http://127.0.0.1:{http_port}{route_prefix.rstrip('/')}/healthz"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5.0) as r:
                body = r.read()
        except urllib.error.HTTPError as e:  # 503 no_table is ours too; HAProxy's 404/503 are not JSON
            body = e.read()
        except OSError:
            body = b""
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and "status" in answer:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the HTTP ingress did not route {route_prefix} within {timeout_s:g} s")
