"""The serving path's own cost, in one Ray instance started with one choice of Serve's path.

Run as a child of bench/bench_overhead_paths.py (CPU) or bench/gpu_overhead.py (GPU): Serve's path
settings are read when Ray's workers start (serving.fast_path), so each choice needs its own Ray.

    python -m bench.overhead_paths --path fast|default --apps noop,noop_wait,app,app_router,... --out FILE

Apps, deployed one after another on the same Ray instance:
- `noop`: one deployment that reads the body and answers a small JSON (the floor).
- `noop_wait`: the same, idle for the app's batch wait (`model.batch.batch_wait_timeout_s`) before it
  answers, as the app's replica is for each request with the simulated model; its wait counts as its
  replica time. A process that idled answers more slowly than one in a tight loop (cold caches, the
  wakeups of the replica, HAProxy and the client): the floor of a request that waits in its replica.
- `noop_chain`: a no-op ingress calling a no-op deployment through a handle (a two-hop floor).
- `app`: this project's app as it deploys by default (`topology: model_ingress`: the MoEModel
  replica is the HTTP ingress; issue 18's design (b)), with the LookupController.
- `app_router`: the same app with `topology: router` (Router -> handle -> MoEModel; design (a) on
  the fast path, today's path before issue 18 on the default one).
- `app_switch`: `app` with a GIL switch interval of SWITCH_INTERVAL_MS in the replica
  (`model.gil_switch_interval_ms`): where the engine's device thread runs Python, the doors on the
  replica's event loop wait up to one interval (5 ms by default) for the GIL at each wakeup.

Serving overhead of one request = the time the client waited - the replica's arrival-to-first-token
time (`output.replica_first_token_ms`; 0 for the no-op app). With a zero-latency model every figure
is the path's own cost.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

SWITCH_INTERVAL_MS = 0.5
BODY = {"prompt": "What is shown in the image?", "max_new_tokens": 1}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] if s else float("nan")


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(xs), 3), "p99": round(pct(xs, 0.99), 3), "n": len(xs)}


class _Client:
    """One kept-alive HTTP/1.1 connection (http.client: the GPU host has no httpx), as an HTTP client
    library keeps it: a new TCP connection per request would be the client's cost, not the server's."""

    def __init__(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname or "127.0.0.1", u.port or 80, u.path or "/"
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode()
        for attempt in (0, 1):  # a connection the server closed is opened again, once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request("POST", self.path, data, {"content-type": "application/json", **headers})
                r = self.conn.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw.startswith(b"{") else {})
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _client_loop(url: str, headers: dict[str, str], n: int, warm: int, out: list[tuple[float, dict[str, Any]]],
                 errors: list[str]) -> None:
    c = _Client(url)
    try:
        for i in range(n + warm):
            t0 = time.perf_counter()
            try:
                status, body = c.post(BODY, headers)
            except (OSError, http.client.HTTPException) as e:
                errors.append(type(e).__name__)
                continue
            ms = (time.perf_counter() - t0) * 1000
            if status != 200:
                errors.append(str(status))
                continue
            if i >= warm:
                out.append((ms, body))
    finally:
        c.close()


def overhead(url: str, clients: int, n: int, budget_ms: float = 10_000.0) -> dict[str, Any]:
    """`clients` closed-loop clients, `n` measured requests each; overhead per request."""
    rows: list[tuple[float, dict[str, Any]]] = []
    errors: list[str] = []
    headers = {"X-Latency-Budget-Ms": f"{budget_ms:g}"}
    threads = [threading.Thread(target=_client_loop, args=(url, headers, n, 20, rows, errors)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outputs = [body.get("output") or {} for _, body in rows]
    over = [ms - float(o.get("replica_first_token_ms") or 0.0) for (ms, _), o in zip(rows, outputs)]
    total = [ms for ms, _ in rows]
    out = {"overhead_ms": summary(over), "client_ms": summary(total), "errors": len(errors)}
    if outputs and "replica_ms" in outputs[0]:
        # A whole answer leaves the replica when its call ends: the time from its first token to
        # that end is in the overhead figure above, and shown apart here.
        out["replica_after_first_token_ms"] = summary(
            [float(o.get("replica_ms") or 0.0) - float(o.get("replica_first_token_ms") or 0.0) for o in outputs])
        out["batch_size"] = summary([float(o.get("batch_size") or 1) for o in outputs])
    timed = [(ms, float(t["total"])) for ms, body in rows
             if isinstance(t := body.get("timings_ms"), dict) and "total" in t]
    if timed:
        # Where the overhead is: before the doors' clock starts (ingress, Serve, the replica's loop)
        # or inside it (the doors' own path).
        out["before_doors_ms"] = summary([ms - total for ms, total in timed])
    return out


def accuracy(url: str, budgets: list[float], n_each: int) -> dict[str, Any]:
    """Mean expected accuracy and feasible share of the knobs the path chose at each budget (one
    client: the router's overhead allowance is what differs between paths)."""
    per: dict[str, dict[str, float]] = {}
    c = _Client(url)
    try:
        for b in budgets:
            accs, feasible = [], 0
            for _ in range(n_each):
                _, body = c.post(BODY, {"X-Latency-Budget-Ms": f"{b:g}"})
                accs.append(float(body.get("expected_accuracy") or 0.0))
                feasible += body.get("feasible") is True
            per[f"{b:g}"] = {"accuracy": round(statistics.fmean(accs), 4), "feasible": feasible / n_each}
    finally:
        c.close()
    return {"per_budget": per, "mean_accuracy": round(statistics.fmean(v["accuracy"] for v in per.values()), 4)}


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        c = _Client(url)
        try:
            if c.post(BODY, {"X-Latency-Budget-Ms": "10000"})[0] == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            c.close()
        time.sleep(0.5)
    raise TimeoutError(f"{url} not answering after {timeout_s:.0f} s")


def noop_app() -> Any:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(name="Noop", ray_actor_options={"num_cpus": 0})
    class Noop:
        async def __call__(self, request: Request) -> JSONResponse:
            await request.body()
            return JSONResponse({"ok": True})

    return Noop.bind()


def noop_wait_app(wait_s: float) -> Any:
    import asyncio

    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(name="NoopWait", ray_actor_options={"num_cpus": 0})
    class NoopWait:
        async def __call__(self, request: Request) -> JSONResponse:
            await request.body()
            t0 = time.perf_counter()
            await asyncio.sleep(wait_s)
            return JSONResponse({"output": {"replica_first_token_ms": (time.perf_counter() - t0) * 1000}})

    return NoopWait.bind()


def noop_chain_app() -> Any:
    """Two no-op deployments, the ingress calling the other through a handle: the floor of a
    two-hop topology (design (a)) on the same settings."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(name="NoopModel", ray_actor_options={"num_cpus": 0})
    class NoopModel:
        async def generate(self, prompt: str) -> dict[str, Any]:
            return {"text": prompt[:1]}

    @serve.deployment(name="NoopIngress", ray_actor_options={"num_cpus": 0})
    class NoopIngress:
        def __init__(self, model: Any) -> None:
            self.model = model

        async def __call__(self, request: Request) -> JSONResponse:
            body = await request.json()
            return JSONResponse(await self.model.generate.remote(str(body.get("prompt", ""))))

    return NoopIngress.bind(NoopModel.bind())


def run(path: str, apps: list[str], config: dict[str, Any], port: int, n: int, budgets: list[float],
        n_each: int, actor_options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    from ray import serve

    from serving.app import build_app_from_config
    from serving.config import ServingConfig
    from serving.local import local_serve

    out: dict[str, Any] = {"path": path}
    with local_serve(port, num_cpus=4, quiet=True, fast_path=path == "fast"):
        for name in apps:
            if name == "noop":
                app = noop_app()
            elif name == "noop_wait":
                app = noop_wait_app(ServingConfig.model_validate(config).model.batch.batch_wait_timeout_s)
            elif name == "noop_chain":
                app = noop_chain_app()
            elif name in ("app", "app_router", "app_switch"):
                topology = "router" if name == "app_router" else "model_ingress"
                model = config.get("model", {})
                if name == "app_switch":  # the deployed app with a short GIL switch interval
                    model = {**model, "gil_switch_interval_ms": SWITCH_INTERVAL_MS}
                cfg = ServingConfig.model_validate({**config, "topology": topology, "model": model})
                app = build_app_from_config(cfg, actor_options=actor_options)
            else:
                raise ValueError(f"app {name!r}: known are noop, noop_wait, noop_chain, app, app_router, app_switch")
            t0 = time.time()
            serve.run(app, name=name, route_prefix="/")  # wait_ready below: the no-op apps have no /healthz
            url = f"http://127.0.0.1:{port}/" + ("" if name.startswith("noop") else "v1/generate")
            wait_ready(url)
            row: dict[str, Any] = {c: overhead(url, clients=c, n=n if c == 1 else max(10, n // 4))
                                   for c in (1, 8)}
            if not name.startswith("noop") and budgets:
                row["accuracy"] = accuracy(url, budgets, n_each)
            row["startup_s"] = round(time.time() - t0, 1)
            out[name] = row
            serve.delete(name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", choices=("fast", "default"), required=True)
    p.add_argument("--apps", default="noop,app")
    p.add_argument("--config", help='a JSON file {"serving": ServingConfig, "actor_options": {"MoEModel": {...}}} '
                   "(default: a synthetic table, zero-latency simulated model)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, default=200, help="measured requests per client at 1 client")
    p.add_argument("--budgets", default="", help="comma-separated budgets (ms) for the accuracy check")
    p.add_argument("--n_each", type=int, default=20)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    actor_options = None
    if a.config:
        given = json.loads(Path(a.config).read_text())
        config, actor_options = given["serving"], given.get("actor_options")
    else:
        from controller.store import TableStore
        from tests.support.tables import synthetic_table

        store = tempfile.mkdtemp(prefix="bench-overhead-")
        TableStore(store).publish(synthetic_table())
        # queue_aware: the budget path subtracts the measured serving overhead, as deployed (what the
        # accuracy check compares across paths).
        config = {"controller": {"store": store}, "budget": {"default_budget_ms": 250, "queue_aware": True},
                  "model": {"backend_options": {"latency_scale": 0}}}
    budgets = [float(b) for b in a.budgets.split(",") if b]
    result = run(a.path, a.apps.split(","), config, a.port, a.n, budgets, a.n_each, actor_options)
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
