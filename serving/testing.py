"""Small real parts for tests, benchmarks and the demo: synthetic tables and a local Serve instance."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller import BuildParams, SampleColumns, Table, build_table
from controller.knobs import TIERS

GRID = (TIERS, (4, 6, 8), (12, 14, 16))


def synthetic_table(
    latency_scale: float = 1.0,
    datasets: Sequence[str] = ("vqav2", "textvqa"),
    samples_per_config: int = 3,
    grid: tuple[Sequence[str], Sequence[int], Sequence[int]] = GRID,
    decode_ms_per_token: float | None = None,
) -> Table:
    """A table over a 3x3x3 grid with plausible magnitudes (40-200 ms). `latency_scale` moves every
    latency, so that tables built with different scales pick different knobs for one budget.
    `decode_ms_per_token` gives every config decode statistics (more blocks decode slower)."""
    rows = []
    for d, _ in enumerate(datasets):
        for tier in grid[0]:
            ti = TIERS.index(tier)
            for k in grid[1]:
                for b in grid[2]:
                    latency = (40 + 35 * ti + 3 * k + 2.5 * b + 4 * d) * latency_scale
                    accuracy = 0.40 + 0.08 * ti + 0.012 * k + 0.006 * b - 0.02 * d
                    for s in range(samples_per_config):
                        rows.append((d, ti, k, b, accuracy, latency + s, latency + s + 20, s))
    a = np.array(rows, dtype=np.float64)
    columns = {
        "dataset": a[:, 0],
        "tier": a[:, 1],
        "top_k": a[:, 2],
        "num_active_blocks": a[:, 3],
        "accuracy": a[:, 4],
        "latency_prefill": a[:, 5],
        "latency_total": a[:, 6],
        "sample_key": a[:, 7],
        "key_from_metadata": np.ones(len(a), dtype=bool),
    }
    if decode_ms_per_token is not None:
        columns["decode_ms_per_token"] = decode_ms_per_token * a[:, 3] / 16 * latency_scale
    samples = SampleColumns(tuple(datasets), columns)  # type: ignore[arg-type]
    return build_table(samples, BuildParams(), source={"synthetic": {"latency_scale": latency_scale}})


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


_shared: dict[str, object] = {"users": 0}


def acquire_shared_serve() -> int:
    """One Ray + Serve per test session, shared by every test directory; returns its HTTP port."""
    if _shared["users"] == 0:
        port = free_port()
        cm = local_serve(port)
        cm.__enter__()
        _shared.update(port=port, cm=cm)
    _shared["users"] = int(_shared["users"]) + 1  # type: ignore[call-overload]
    return int(_shared["port"])  # type: ignore[call-overload]


def release_shared_serve() -> None:
    _shared["users"] = int(_shared["users"]) - 1  # type: ignore[call-overload]
    if _shared["users"] == 0:
        _shared.pop("cm").__exit__(None, None, None)  # type: ignore[attr-defined]


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
            stop_serve()
        finally:
            ray.shutdown()


def stop_serve(timeout_s: float = 30.0) -> None:
    """`serve.shutdown()` without its noise. Serve's own shutdown waits on a controller call that
    only ends when the controller kills itself; the controller retries actor tasks forever, so the
    driver prints "Task ServeController.graceful_shutdown failed ... killed by ray.kill" every time.
    Here the controller is only told to shut down (the call returns at once), and we wait until its
    named actor is gone. Any surprise falls back to `serve.shutdown()`."""
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.context import _get_global_client, _set_global_client

    try:
        client = _get_global_client(raise_if_no_controller_running=False)
        if client is None:
            return
        client.shutdown_cached_handles()
        ray.get(client._controller.graceful_shutdown.remote(False), timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            except ValueError:  # the named actor is gone: Serve is down
                client._shutdown = True
                _set_global_client(None)
                return
            time.sleep(0.05)
        logging.getLogger(__name__).warning("Serve controller still alive after %.0f s; serve.shutdown()", timeout_s)
    except Exception as e:  # a Ray version without these internals: the public way, noise and all
        logging.getLogger(__name__).warning("quiet Serve shutdown failed (%s); serve.shutdown()", e)
    serve.shutdown()


@dataclass(frozen=True)
class Sample:
    budget_ms: float
    status: int  # 0: the request itself failed (connection error, client timeout)
    knobs: dict[str, Any] | None
    table_version: str | None
    fallback: bool | None
    latency_s: float
    started: float


class LoadLoop:
    """Closed-loop HTTP load from a background thread: `concurrency` clients, each sending the next
    request as soon as the previous one answers. Every outcome is kept in `samples`."""

    def __init__(self, url: str, budgets: Sequence[float], concurrency: int = 8, prompt: str = "hi") -> None:
        self.url, self.budgets, self.concurrency, self.prompt = url, list(budgets), concurrency, prompt
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> LoadLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    async def _client(self, client: Any, worker: int) -> None:
        i = worker
        while not self._stop.is_set():
            budget = self.budgets[i % len(self.budgets)]
            i += self.concurrency
            started = time.perf_counter()
            try:
                r = await client.post(
                    self.url, json={"prompt": self.prompt}, headers={"X-Latency-Budget-Ms": str(budget)}
                )
                body = r.json() if r.status_code == 200 else {}
                sample = Sample(
                    budget,
                    r.status_code,
                    body.get("knobs"),
                    body.get("table_version"),
                    body.get("fallback"),
                    time.perf_counter() - started,
                    started,
                )
            except Exception:
                sample = Sample(budget, 0, None, None, None, time.perf_counter() - started, started)
            self.samples.append(sample)

    async def _main(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(*(self._client(client, w) for w in range(self.concurrency)))


class ReloadProbe:
    """Publishes tables to a running app's store and reports when each replica took them over,
    from the replicas' own swap stamps and the load loop's response times (used by the hot-reload
    test and the reload benchmark)."""

    def __init__(self, base: str, store: str, app_name: str, controllers: int) -> None:
        import httpx
        from ray import serve

        from controller.store import TableStore

        self.base, self.store_dir, self.store = base, Path(store), TableStore(store)
        self.controllers = controllers
        self.tables: dict[str, Table] = {}
        self.published_at: dict[str, tuple[float, float]] = {}
        self.handle = serve.get_deployment_handle("LookupController", app_name=app_name)
        self.http = httpx.Client(base_url=base, timeout=30)

    def publish(self, table: Table) -> Table:
        published = self.store.publish(table)
        # The publish's completion, on both clocks: wall time for the controllers' swap stamps,
        # perf_counter for the load loop's response times.
        self.published_at[published.version_id] = (time.time(), time.perf_counter())
        self.tables[published.version_id] = published
        return published

    def controller_versions(self) -> dict[str, dict[str, Any]]:
        """Status of every controller replica (calls are spread over replicas at random)."""
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(5):
            for r in [self.handle.status.remote() for _ in range(8)]:
                s = r.result(timeout_s=30)
                seen[s["replica_id"]] = s
            if len(seen) >= self.controllers:
                break
        return seen

    def wait_all_serving(self, version: str, limit_s: float) -> dict[str, dict[str, Any]]:
        """Waits until every controller replica and the router serve `version`; returns the replicas'
        statuses. Only a wait: how long each part took is measured from timestamps, see lags()."""
        started = time.monotonic()
        while time.monotonic() - started < limit_s + 5:
            ctl = self.controller_versions()
            router = self.http.get("/v1/table").json()["table_version"]
            if len(ctl) >= self.controllers and all(s["table_version"] == version for s in ctl.values()):
                if router == version:
                    return ctl
            time.sleep(0.05)
        raise TimeoutError(f"{version} not served everywhere after {limit_s + 5} s")

    def lags(self, version: str, controllers: dict[str, dict[str, Any]], load: LoadLoop) -> dict[str, float]:
        """Seconds from the publish's completion until each controller replica swapped the version in
        (its own clock stamp) and until the router's first response carrying it completed (the load
        loop's clock): no polling delay of the test itself is counted."""
        wall, perf = self.published_at[version]
        lags = {f"controller {rid}": s["serving_since_unix"] - wall for rid, s in controllers.items()}
        carried = [s.started + s.latency_s for s in load.samples if s.table_version == version]
        if not carried:
            raise RuntimeError(f"no response carried {version}")
        lags["router (first response)"] = min(carried) - perf
        return lags
