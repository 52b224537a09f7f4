"""Attainment (share of requests whose served latency is within budget) against offered load.

    python -m bench.bench_attainment [--quick]          # the local curve, as `make bench` runs it
    python -m bench.bench_attainment --url http://HOST:8000 --concurrency 1,2,4,8 [--budgets 150,250]

Local curve: a real local Serve, the simulated model in table mode with a real queue (one request
per backend call, one call at a time, latency = the table's first-token latency with 5% jitter).
Capacity is measured first (closed loop, 8 clients, static table); then Poisson arrivals at 25, 50,
75 and 90% of it, for: the static table (the behaviour before queue-aware resolve), queue-aware
resolve with late binding (FIFO), the same in deadline order with the blocking guard (one model
replica, and two, whose load is a share of the 2-replica capacity), and queue-aware plus live
recalibration after a 30% slowdown (the automatic mode publishes first).
With --url: the same load generator against any running router, closed loop per concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.attainment_load import closed_loop, open_loop, summarize

LOADS = (0.25, 0.50, 0.75, 0.90)
BUDGETS = (100.0, 130.0, 170.0, 240.0)  # ms, in turn; the table's p99 first-token latencies run 45-97 ms
GOAL = 0.99
BLOCKING = 0.003  # model.blocking_miss_budget of the deadline-order apps (the shipped configs' value)
FIFO = "queue-aware"
DEADLINE = "queue-aware + deadline order"
DEADLINE_2 = "queue-aware + deadline order, 2 replicas"
RECAL = "queue-aware + live recalibration, 30% slower"
# --curves names: the static table is always measured (every point's baseline).
CURVES = {"fifo": FIFO, "deadline": DEADLINE, "deadline2": DEADLINE_2, "recal": RECAL}
MIN_SAMPLES = 20
ROOT = Path(__file__).resolve().parent.parent
PLOT = ROOT / "docs" / "attainment.png"


def bench_table(scale: float = 0.5, samples: int = 200, jitter: float = 0.05) -> Any:
    """A 27-config table built like a profile: `samples` lognormal draws per config around the
    synthetic grid's latency, decode statistics, and p99 latencies (a budget should hold for most
    requests, not the average one)."""
    return grid_table(lambda ti, k, b: (40 + 35 * ti + 3 * k + 2.5 * b) * scale, lambda b: 2.0 * b / 16 * scale,
                      20.0, "bench_attainment", samples, jitter)


def grid_table(first_ms: Callable[[int, int, int], float], decode_ms: Callable[[int], float], total_extra_ms: float,
               bench: str, samples: int = 200, jitter: float = 0.05) -> Any:
    """The synthetic grid's 27 configs as a p99 table: per config, `samples` lognormal draws around
    `first_ms(tier index, top_k, blocks)` as the first token (+ `total_extra_ms` for the whole
    request), `decode_ms(blocks)` a token, and an accuracy that grows with every knob."""
    import numpy as np

    from controller import BuildParams, SampleColumns, build_table
    from controller.knobs import TIERS
    from tests.support.tables import GRID

    rng = np.random.default_rng(0)
    cols: dict[str, list[Any]] = {k: [] for k in ("tier", "top_k", "num_active_blocks", "accuracy",
                                                  "latency_prefill", "latency_total", "decode_ms_per_token")}
    for tier in GRID[0]:
        ti = TIERS.index(tier)
        for k in GRID[1]:
            for b in GRID[2]:
                lat = first_ms(ti, k, b) * rng.lognormal(0, jitter, samples)
                cols["tier"] += [ti] * samples
                cols["top_k"] += [k] * samples
                cols["num_active_blocks"] += [b] * samples
                cols["accuracy"] += [0.40 + 0.08 * ti + 0.012 * k + 0.006 * b] * samples
                cols["latency_prefill"] += list(lat)
                cols["latency_total"] += list(lat + total_extra_ms)
                cols["decode_ms_per_token"] += [decode_ms(b)] * samples
    n = len(cols["tier"])
    arrays = {k: np.asarray(v) for k, v in cols.items()}
    arrays.update(dataset=np.zeros(n), sample_key=np.arange(n), key_from_metadata=np.ones(n, dtype=bool))
    return build_table(SampleColumns(("synthetic",), arrays), BuildParams(latency_quantile=0.99, tolerance=0.0),
                       source={"synthetic": {"bench": bench, "jitter_sigma": jitter}})


def _config(store: str, *, queue_aware: bool, proxy_ms: float = 1.0, slowdown: float = 1.0,
            auto: bool = False, scheduling: str = "fifo", blocking: float | None = None) -> Any:
    from serving.config import ServingConfig

    return ServingConfig.model_validate(
        {
            "budget": {"default_budget_ms": 100, "queue_aware": queue_aware, "proxy_overhead_ms": proxy_ms},
            "controller": {
                "store": store,
                "poll_interval_s": 0.25,
                "feedback": {"window_s": 120, "min_samples": MIN_SAMPLES, "flush_interval_s": 0.25,
                             "auto": {"enabled": auto, "drift_share": 0.15, "drift_for_s": 1.0, "cooldown_s": 0}},
            },
            "model": {
                "backend_options": {"latency_source": "table", "latency_scale": 1.0, "jitter_sigma": 0.05,
                                    "decode": "per_token", "ground_truth": "first_table",
                                    "slowdown": slowdown, "seed": 0},
                "batch": {"max_batch_size": 1, "batch_wait_timeout_s": 0},
                "scheduling": scheduling,
                "blocking_miss_budget": blocking,
            },
        }
    )


def _curve(base: str, capacity: float, requests: int) -> list[dict[str, Any]]:
    out = []
    for share in LOADS:
        results = asyncio.run(open_loop(base, BUDGETS, rate_rps=share * capacity, requests=requests, seed=7))
        out.append({"load": share, **summarize(results)})
    return out


def _recalibrate_live(base: str, store: Any, first: str, table: Any, proxy_ms: float,
                      limit: int) -> tuple[int, str | None, dict[str, Any]]:
    """Serve a sweep of budgets (one per config, at 1.3x its latency) until the automatic mode has
    published, no config the controller judges (>= min_samples live samples) still drifts and a
    sweep added none to judge, or `limit`. Only the ladder's configs are ever served, so waiting for
    every config of the table to be recalibrated would never end before `limit`. Also returns the
    controller's live state, so that a run that did not publish says why (samples, drift, refusals,
    errors)."""
    import httpx

    sweep = sorted({round(c.latency_ms * 1.3 + proxy_ms + 8, 1) for c in table.configs()})
    sent, live, judged = 0, {}, -1
    while sent < limit:
        asyncio.run(closed_loop(base, sweep, concurrency=2, requests=len(sweep) * 2))
        sent += len(sweep) * 2
        try:
            stats = httpx.get(f"{base}/v1/stats", timeout=5).json()
            live = {**((stats.get("controller") or {}).get("live") or {}),
                    "router_feedback": ((stats.get("router") or {}).get("queue") or {}).get("feedback")}
        except Exception as e:  # noqa: BLE001 - diagnostics only
            live = {"error": f"{type(e).__name__}: {e}"}
        drift = live.get("drift_p95") or {}
        # Published, nothing judged drifts, and no config reached min_samples during the last sweep.
        settled = drift and len(drift) == judged and all(abs(d) <= 0.15 for d in drift.values())
        if store.latest_id() != first and settled:
            break
        judged = len(drift)
    latest = store.latest_id()
    return sent, (None if latest == first else latest), live


def _live_note(live: dict[str, Any]) -> str:
    """The controller's live state in one line: why an automatic publish did (not) happen."""
    if "error" in live:
        return f"controller live state unavailable: {live['error']}"
    samples = {k: v.get("samples") for k, v in (live.get("configs") or {}).items()}
    top = sorted(samples.items(), key=lambda kv: -(kv[1] or 0))[:6]
    return (f"controller live state: accepted {live.get('accepted')}, refused {live.get('refused')}, "
            f"samples (top) {top}, drift p95 {live.get('drift_p95')}, publishes "
            f"{len((live.get('auto') or {}).get('publishes') or [])}, last error {live.get('last_error')}, "
            f"router feedback {live.get('router_feedback')}")


def _plot(curves: dict[str, list[dict[str, Any]]]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, points in curves.items():
        ax.plot([100 * p["load"] for p in points], [100 * p["attainment"] for p in points], marker="o", label=name)
    ax.axhline(100 * GOAL, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("offered load (% of measured capacity)")
    ax.set_ylabel("requests within budget (%)")
    ax.set_title("Attainment vs load (CPU, simulated model with a real queue)")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return str(PLOT.relative_to(ROOT))


def run(quick: bool = False, per_point: int | None = None, curves_wanted: tuple[str, ...] = tuple(CURVES),
        blocking: float = BLOCKING) -> dict[str, Any]:
    import statistics

    import httpx
    from ray import serve

    from controller.store import TableStore
    from serving.app import build_app_from_config
    from serving.local import free_port, local_serve, run_routed

    # per point (4 curves x 4 loads): 40 keeps the run within make bench's 240 s; a quiet host can
    # afford more (--requests), which a 99% goal needs to mean much (40 allows no miss at all).
    requests = per_point or (30 if quick else 40)
    table = bench_table()
    stores = {name: tempfile.mkdtemp(prefix=f"bench-att-{name}-") for name in ("base", "recal")}
    firsts = {name: TableStore(s).publish(table).version_id for name, s in stores.items()}
    port = free_port()
    curves: dict[str, list[dict[str, Any]]] = {}
    # Logical CPUs for Ray's placement only: the simulated replicas sleep, they do not compute.
    with local_serve(port, num_cpus=8, quiet=True):
        base = f"http://127.0.0.1:{port}"
        run_routed(build_app_from_config(_config(stores["base"], queue_aware=False)), http_port=port, name="a0",
                   route_prefix="/a0")
        static_url = f"{base}/a0"
        asyncio.run(closed_loop(static_url, BUDGETS, concurrency=2, requests=20))  # warm-up
        # What the router cannot see: proxy + client time around it (client latency - router total).
        calib = asyncio.run(closed_loop(static_url, BUDGETS, concurrency=1, requests=60))
        outside = sorted(r.latency_ms - r.router_ms for r in calib if r.router_ms is not None)
        proxy_ms = round(outside[int(0.99 * (len(outside) - 1))], 1)
        apps = {
            FIFO: _config(stores["base"], queue_aware=True, proxy_ms=proxy_ms),
            DEADLINE: _config(stores["base"], queue_aware=True, proxy_ms=proxy_ms, scheduling="deadline",
                              blocking=blocking),
            DEADLINE_2: _config(stores["base"], queue_aware=True, proxy_ms=proxy_ms, scheduling="deadline",
                                blocking=blocking),
            RECAL: _config(stores["recal"], queue_aware=True, proxy_ms=proxy_ms, slowdown=1.3, auto=True),
            "static table, 2 replicas": _config(stores["base"], queue_aware=False),  # capacity of 2 only
        }
        wanted = {CURVES[c] for c in curves_wanted}
        apps = {name: c for name, c in apps.items() if name in wanted or (name == "static table, 2 replicas"
                                                                           and DEADLINE_2 in wanted)}
        urls = {"static table": static_url}
        for i, (name, config) in enumerate(apps.items(), start=1):
            two = name in (DEADLINE_2, "static table, 2 replicas")
            run_routed(build_app_from_config(config, replicas={"MoEModel": 2} if two else None), http_port=port,
                       name=f"a{i}", route_prefix=f"/a{i}")
            urls[name] = f"{base}/a{i}"
            asyncio.run(closed_loop(urls[name], BUDGETS, concurrency=2, requests=20))
        cap = summarize(asyncio.run(closed_loop(static_url, BUDGETS, concurrency=8, requests=requests)))
        capacity = cap["throughput_rps"]
        url2 = urls.pop("static table, 2 replicas", None)
        cap2 = summarize(asyncio.run(closed_loop(url2, BUDGETS, concurrency=16, requests=2 * requests))) if url2 \
            else {"throughput_rps": math.nan}
        capacities = {name: (cap2["throughput_rps"] if name == DEADLINE_2 else capacity) for name in urls}
        recal_url = urls.get(RECAL)
        recal_store = TableStore(stores["recal"])
        warm_sent, published, live = (0, None, {}) if recal_url is None else _recalibrate_live(
            recal_url, recal_store, firsts["recal"], table, proxy_ms, 600 if quick else 1000)
        if recal_url is not None and published is not None:  # measure once the router serves the newest version
            deadline = time.monotonic() + 10
            while httpx.get(f"{recal_url}/v1/table").json().get("table_version") != recal_store.latest_id():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        for name, url in urls.items():
            curves[name] = _curve(url, capacities[name], requests)
        for i in range(len(apps) + 1):
            serve.delete(f"a{i}")
    extra = {"proxy_ms": proxy_ms, "outside_p50_ms": statistics.median(outside), "capacity_2": cap2["throughput_rps"],
             "blocking": blocking, "recal": recal_url is not None, "live": _live_note(live) if live else None}
    plot = _plot(curves)
    recal = TableStore(stores["recal"]).load("latest") if published else None
    return _report(curves, capacity, requests, warm_sent, published, recal, table, plot, quick, extra)


def _report(curves: dict[str, list[dict[str, Any]]], capacity: float, requests: int, warm_sent: int,
            published: str | None, recal: Any, table: Any, plot: str | None, quick: bool,
            extra: dict[str, Any]) -> dict[str, Any]:
    static = {p["load"]: p for p in curves["static table"]}
    figures = []
    for name, points in curves.items():
        for p in points:
            judged = name in (FIFO, DEADLINE, DEADLINE_2) and p["load"] <= 0.75
            figures.append({
                "name": f"{name} @ {round(100 * p['load'])}% load",
                "value": f"{100 * p['attainment']:.1f}% (acc {p['mean_expected_accuracy']:.3f})",
                "unit": "",
                "baseline": f"{100 * static[p['load']]['attainment']:.1f}% "
                            f"(acc {static[p['load']]['mean_expected_accuracy']:.3f})",
                "baseline_name": "static table (before queue-aware resolve), same load, same run",
                "goal": f">= {100 * GOAL:g}%" if judged else "",
                "passed": (p["attainment"] >= GOAL) if judged else None,
            })
    notes = [
        f"measured capacity (static table, closed loop, 8 clients): {capacity:.1f} req/s with one model replica"
        + ("" if math.isnan(extra["capacity_2"]) else
           f", {extra['capacity_2']:.1f} req/s with two (16 clients; the 2-replica curve's load is a share of that)")
        + "; "
        f"{requests} requests per point, Poisson arrivals; budgets {', '.join(f'{b:g}' for b in BUDGETS)} ms in "
        "turn; max_new_tokens 1",
        "served latency = client-measured latency minus the decode time the model reported (first-token budgets)",
        "model: simulated, table mode, one request per backend call, one call at a time per replica; 5% lognormal "
        "jitter; late binding on in every queue-aware app; deadline-order apps: model.blocking_miss_budget "
        f"{extra['blocking']:g}; "
        "table: synthetic, built from 200 draws per config with p99 latencies (first token p99 45-97 ms), tolerance 0",
        f"proxy + client time around the router, measured first: p50 {extra['outside_p50_ms']:.1f} ms, "
        f"p99 {extra['proxy_ms']:.1f} ms (the queue-aware apps' budget.proxy_overhead_ms)",
        "'acc' is the mean expected accuracy of the answered requests, from the table that resolved them",
    ]
    if published:
        low = {c.knobs.key: c.latency_ms for c in table.configs()}
        ratios = [c.latency_ms / low[c.knobs.key] for c in recal.configs()]
        # Configs no request ran (the budgets' ladders never reach them) keep their profiled latency.
        moved = [r for r in ratios if abs(r - 1.0) > 1e-9] or [1.0]
        notes.append(f"automatic recalibration: newest version {published} after {warm_sent} warm-up requests; "
                     f"latency / profiled over the {len(moved)} of {len(ratios)} configs it recalibrated: "
                     f"{min(moved):.3f}-{max(moved):.3f} (slowdown 1.30; the others were not served)")
    elif extra["recal"]:
        notes.append(f"automatic recalibration did not publish within {warm_sent} warm-up requests")
    if extra["live"]:
        notes.append(extra["live"])
    if plot:
        notes.append(f"plot: {plot}")
    for name, points in curves.items():
        notes.append(f"{name}: " + ", ".join(
            f"{round(100 * p['load'])}%: p50 {p['p50_ms']:.0f} ms p99 {p['p99_ms']:.0f} ms, expected wait "
            f"{p['mean_expected_wait_ms']:.0f} ms, flagged feasible {100 * p['feasible_share']:.0f}% of which met "
            f"{100 * p['attainment_when_feasible']:.0f}%, misses {p['misses']} (wait over estimate "
            f"{p['misses_wait_over_estimate']}, overhead over budgeted {p['misses_overhead_over_budgeted']})"
            for p in points))
    for name in (DEADLINE, DEADLINE_2):  # where each judged miss came from
        for p in curves.get(name, []):
            if p["miss_detail"] and p["load"] <= 0.75:
                notes.append(f"{name} @ {round(100 * p['load'])}% misses: " + "; ".join(p["miss_detail"]))
    return {"title": "Attainment vs offered load: static table, queue-aware, live recalibration (CPU, simulated "
                     "model with a real queue)" + (" [quick]" if quick else ""),
            "figures": figures, "notes": notes}


def remote(url: str, concurrencies: list[int], budgets: list[float], requests: int, policy: str | None,
           covers: str) -> list[dict[str, Any]]:
    """The same generator against a running router: one closed-loop run per concurrency."""
    headers = {"X-Budget-Policy": policy} if policy else {}
    rows = []
    for c in concurrencies:
        results = asyncio.run(closed_loop(url, budgets, concurrency=c, requests=requests, headers=headers))
        rows.append({"concurrency": c, **summarize(results, covers)})
    return rows


def _numbers(text: str, kind: type, what: str) -> list[Any]:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"bench_attainment: error: {what}={text!r} is not a comma-separated list of numbers") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise SystemExit(f"bench_attainment: error: {what}={text!r} must hold finite numbers > 0")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer requests per point (local curve)")
    p.add_argument("--url", help="base URL of a running router, e.g. http://127.0.0.1:8000")
    p.add_argument("--concurrency", default="1,2,4,8", help="closed-loop clients per run (with --url)")
    p.add_argument("--budgets", default="150,250,400", help="budgets in ms, sent in turn (with --url)")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per concurrency (with --url; default 200) or per load point (local; default 40)")
    p.add_argument("--policy", choices=("best-effort", "strict"), default=None)
    p.add_argument("--covers", choices=("first_token", "total"), default="first_token",
                   help="what the server's budgets cover: first_token takes reported decode time off")
    p.add_argument("--curves", default=",".join(CURVES),
                   help=f"local curves besides the static table, comma-separated subset of {','.join(CURVES)}")
    p.add_argument("--blocking", type=float, default=BLOCKING,
                   help="model.blocking_miss_budget of the deadline-order apps (local curve)")
    a = p.parse_args(argv)
    if a.url is None:
        from bench.report import cli_main

        if a.requests is not None and not 10 <= a.requests <= 100_000:
            raise SystemExit(f"bench_attainment: error: --requests={a.requests} must be in [10, 100000]")
        curves = tuple(c.strip() for c in a.curves.split(",") if c.strip())
        bad = [c for c in curves if c not in CURVES] if curves else ["(none)"]
        if bad:
            raise SystemExit(f"bench_attainment: error: --curves={a.curves!r}: {bad[0]} is not a curve; expected a "
                             f"comma-separated subset of {', '.join(CURVES)}")
        if not (math.isfinite(a.blocking) and 0 < a.blocking <= 1):
            raise SystemExit(f"bench_attainment: error: --blocking={a.blocking} must be in (0, 1]")
        sys.argv = [sys.argv[0]] + (["--quick"] if a.quick else [])
        cli_main(functools.partial(run, per_point=a.requests, curves_wanted=curves, blocking=a.blocking), __doc__)
        return 0
    if not a.url.startswith(("http://", "https://")):
        raise SystemExit(f"bench_attainment: error: --url={a.url!r} is not an http(s) URL")
    a.requests = 200 if a.requests is None else a.requests
    if not 1 <= a.requests <= 1_000_000:
        raise SystemExit(f"bench_attainment: error: --requests={a.requests} must be in [1, 1000000]")
    conc = [int(c) for c in _numbers(a.concurrency, float, "--concurrency")]
    rows = remote(a.url, conc, _numbers(a.budgets, float, "--budgets"), a.requests, a.policy, a.covers)
    print(f"{'clients':>7} {'attain':>7} {'acc':>6} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} {'ok':>5}")
    for r in rows:
        print(f"{r['concurrency']:>7} {100 * r['attainment']:>6.1f}% {r['mean_expected_accuracy']:>6.3f} "
              f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['throughput_rps']:>7.1f} {r['ok']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
