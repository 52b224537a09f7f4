"""Streams and non-streams under open-loop load, as the client sees them (issue 17).

    python -m bench.bench_streams [--quick] [--requests N] [--out rows.json] [--no-doc]

A real local Serve runs the shipped CPU app (configs/serving_local.yaml: queue-aware resolve,
deadline order, blocking guard) with the simulated model in table mode at latency scale 1, decode
per token (a stream's decode takes time), one request per backend call, over bench_attainment's
synthetic p99 table. Measured first, in the same run: the proxy + client time around the router
(the app's budget.proxy_overhead_ms), the capacity (static table, closed loop, 8 clients), and four
budgets picked from GET /v1/knobs across the table's frontier, tight to loose.

Scenario 1: Poisson arrivals at 25 / 50 / 75% of that capacity, half of them streamed through the
openai client (/v1/completions, stream=True), half POST /v1/generate, 16 new tokens each. Per kind:
the share the router flagged feasible (X-Budget-Feasible), attainment of the client-seen first token
among those (goal >= 99%), mean expected accuracy of the chosen knobs.
Scenario 2: the same non-streamed arrivals at 50%, alone and beside two long streams (512 tokens,
restarted when they end): feasible share and mean expected accuracy should move by at most 5%. It
runs on the synthetic grid (decode ~0.75 ms a token: each stream ends and starts again every
~0.75 s, its prefill holding the device each time) and again on the table built from the bundled
profiling results, whose magnitudes are the H100 profile's (decode ~29-44 ms a token: a 512-token
stream lasts ~20 s), each with its own budgets and capacity.
Prints a table and writes the section SECTION of docs/BENCHMARKS.latest.md (replaced if there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.stream_load import (
    GENERATE,
    STREAM,
    LongStreams,
    Row,
    as_dicts,
    open_loop,
    open_loop_with_streams,
    plan,
    stream,
    summarize,
)

LOADS = (0.25, 0.50, 0.75)
ISOLATION_LOAD = 0.50
SETTLE_S = 32.0  # the router's overhead window (30 s) and a little
GOAL_ATTAINMENT = 0.99
GOAL_CHANGE = 0.05  # relative change of the non-streamed figures beside long streams
# The isolation scenario draws this many times a point's requests: its figure is a difference of two
# shares, and at 80 requests a side one share alone moves by +-5 points from chance (binomial), as
# much as the goal.
ISOLATION_FACTOR = 3
MAX_NEW_TOKENS = 16
LONG_STREAMS, LONG_TOKENS = 2, 512
SECTION = "Streams and non-streams, open loop (issue 17)"
ROOT = Path(__file__).resolve().parent.parent
# The isolation scenario again at the profile's magnitudes: the table `make demo` builds from the
# bundled profiling results (first token ~98-184 ms, decode ~29-44 ms a token, as on the H100).
PROFILE = ROOT / "sample_results" / "core_exp_synthetic"
PROFILE_TAG = " (profile table)"
PROFILE_REQUESTS = 240
# The generated report (bench.run_all's file), never docs/BENCHMARKS.md: a section written there
# replaces everything up to the next "## ", runs recorded under it by hand included.
DOC = ROOT / "docs" / "BENCHMARKS.latest.md"
SHIPPED = ROOT / "configs" / "serving_local.yaml"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def app_config(store: str, *, queue_aware: bool, proxy_ms: float, decode_slots: int | None = None) -> Any:
    """The shipped CPU config, with this bench's store, a model that follows the table at scale 1
    (decode per token) and one request per backend call, so that load makes a queue; `decode_slots`
    overrides the shipped device's (the isolation baseline)."""
    from serving.config import ServingConfig, load_config

    shipped = load_config(SHIPPED).model_dump(mode="json")
    if decode_slots is not None:
        shipped = _merge(shipped, {"model": {"backend_options": {"decode_slots": decode_slots}}})
    return ServingConfig.model_validate(_merge(shipped, {
        "budget": {"queue_aware": queue_aware, "proxy_overhead_ms": proxy_ms},
        "controller": {"store": store, "poll_interval_s": 0.25},
        "model": {
            "backend_options": {"latency_source": "table", "latency_scale": 1.0, "jitter_sigma": 0.05,
                                "decode": "per_token", "seed": 0},
            "batch": {"max_batch_size": 1, "batch_wait_timeout_s": 0},
        },
    }))


def pick_budgets(url: str, margin_ms: float) -> tuple[list[float], list[dict[str, Any]]]:
    """Four budgets across the frontier GET /v1/knobs reports: the fastest config, a third and two
    thirds of the way, and 1.25x the slowest, each plus `margin_ms` (the overhead allowance the
    router takes off before it resolves); with what /v1/knobs answers for budget - margin, which is
    what the router resolves at idle."""
    import httpx

    with httpx.Client(timeout=10) as c:
        seen = set()
        for b in range(10, 400, 3):
            a = c.get(f"{url}/v1/knobs", params={"budget_ms": b}).json()
            if a.get("feasible"):
                seen.add(round(float(a["expected_latency_ms"]), 3))
        frontier = sorted(seen)
        if not frontier:
            raise RuntimeError(f"GET {url}/v1/knobs found no feasible config for budgets 10-400 ms")
        points = (frontier[0], frontier[len(frontier) // 3], frontier[2 * len(frontier) // 3], 1.25 * frontier[-1])
        budgets = sorted({float(math.ceil(p + margin_ms)) for p in points})
        answers = []
        for b in budgets:
            a = c.get(f"{url}/v1/knobs", params={"budget_ms": b - margin_ms}).json()
            answers.append({"budget_ms": b, "config": "_".join(str(a["knobs"][k]) for k in
                                                                ("tier", "top_k", "num_active_blocks")),
                            "expected_latency_ms": a.get("expected_latency_ms"),
                            "expected_accuracy": a.get("expected_accuracy"), "frontier_size": len(frontier)})
    return budgets, answers


async def _warm_streams(url: str, budget: float, n: int) -> list[Row]:
    from bench.stream_load import openai_client

    client = openai_client(url)
    try:
        return list(await asyncio.gather(*(stream(client, budget, MAX_NEW_TOKENS, 0.0, 0.0) for _ in range(n))))
    finally:
        await client.close()


def router_estimate(url: str) -> dict[str, Any]:
    """The router's queue estimate from GET /v1/stats (wait, overhead allowance, in flight); {} if absent."""
    import httpx

    try:
        stats = httpx.get(f"{url}/v1/stats", timeout=5).json()
    except Exception:  # noqa: BLE001 - diagnostics only
        return {}
    est = ((stats.get("router") or {}).get("queue") or {}).get("estimate")
    return est if isinstance(est, dict) else {}


def settle(url: str, overhead_ms: float, limit_s: float = SETTLE_S) -> dict[str, Any]:
    """Wait until the router expects no queue and its overhead allowance is back near `overhead_ms`
    (it is a p99 over the last 30 s: one stall of this shared host raises it for that long), so that
    every point starts from the same state. Returns how long it took and what it read."""
    started = time.monotonic()
    while True:
        est = router_estimate(url)
        quiet = (est.get("in_flight") or 0) == 0 and (est.get("wait_ms") or 0.0) <= 1.0 \
            and (est.get("overhead_ms") or 0.0) <= overhead_ms + 10
        waited = time.monotonic() - started
        if quiet or not est or waited > limit_s:
            return {"settle_s": waited, "settled": bool(quiet), "overhead_at_start_ms": est.get("overhead_ms"),
                    "loadavg_1m": os.getloadavg()[0]}
        time.sleep(0.5)


def measure(quick: bool = False, per_point: int | None = None, baseline_slots: int | None = None,
            profile_requests: int | None = None) -> dict[str, Any]:
    """Start a local Serve, set up, run both scenarios; the raw rows and what the setup measured.
    `baseline_slots`: also run the isolation scenario (same arrivals) on an app whose device holds
    that many decode batches, the baseline the shipped device is compared with.
    `profile_requests`: also run the isolation scenario, with this many arrivals a side, on the
    table built from the bundled profiling results (PROFILE), whose magnitudes are the H100
    profile's: the synthetic grid decodes a token in ~0.75 ms, so its 512-token streams end and
    start again every ~0.75 s, a stream start (and its prefill) 40x as often as real ones."""
    import httpx
    from ray import serve

    from bench.attainment_load import closed_loop
    from bench.attainment_load import summarize as closed_summary
    from bench.bench_attainment import bench_table
    from controller.store import TableStore
    from serving.app import build_app_from_config
    from serving.local import free_port, local_serve, run_routed

    requests = per_point or (30 if quick else 80)
    limit_s = 8.0 if quick else SETTLE_S  # a quick run settles less (make bench --quick: 120 s a benchmark)
    started = time.monotonic()
    store = tempfile.mkdtemp(prefix="bench-streams-")
    TableStore(store).publish(bench_table())
    port = free_port()
    setup: dict[str, Any] = {"requests_per_point": requests}
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    with local_serve(port, num_cpus=8, quiet=True):
        base = f"http://127.0.0.1:{port}"
        static = f"{base}/s0"
        run_routed(build_app_from_config(app_config(store, queue_aware=False, proxy_ms=1.0)), http_port=port,
                   name="s0", route_prefix="/s0")
        asyncio.run(closed_loop(static, [250.0], concurrency=2, requests=20, max_new_tokens=MAX_NEW_TOKENS))
        calib = asyncio.run(closed_loop(static, [250.0], concurrency=1, requests=30 if quick else 60,
                                        max_new_tokens=MAX_NEW_TOKENS))
        outside = sorted(r.latency_ms - r.router_ms for r in calib if r.status == 200 and r.router_ms is not None)
        proxy_ms = round(outside[int(0.99 * (len(outside) - 1))], 1)

        shipped = app_config(store, queue_aware=True, proxy_ms=proxy_ms)
        run_routed(build_app_from_config(shipped), http_port=port, name="s1", route_prefix="/s1")
        url = f"{base}/s1"
        asyncio.run(closed_loop(url, [250.0], concurrency=2, requests=20, max_new_tokens=MAX_NEW_TOKENS))
        warm = asyncio.run(_warm_streams(url, 250.0, 4))
        # The allowance the router takes off every budget at idle: budgets are the frontier plus this.
        overhead = settle(url, math.inf).get("overhead_at_start_ms") or proxy_ms
        budgets, knobs = pick_budgets(url, overhead + 2)
        cap = closed_summary(asyncio.run(closed_loop(static, budgets, concurrency=8, requests=max(40, requests),
                                                     max_new_tokens=MAX_NEW_TOKENS)))
        capacity = cap["throughput_rps"]
        serve.delete("s0")
        setup.update(proxy_p50_ms=statistics.median(outside), proxy_ms=proxy_ms, idle_overhead_ms=overhead,
                     budgets=budgets, knobs=knobs, capacity_rps=capacity,
                     warm_stream_errors=[r.error for r in warm if r.status != 200],
                     setup_s=time.monotonic() - started)

        for i, share in enumerate(LOADS):
            arrivals = plan(requests, share * capacity, budgets, 0.5, seed=11 + i)
            start = settle(url, overhead, limit_s)
            got = asyncio.run(open_loop(url, arrivals, MAX_NEW_TOKENS))
            rows += as_dicts(got, scenario="mixed", load=share)
            for kind in (STREAM, GENERATE):
                summaries.append({"scenario": "mixed", "load": share, "kind": kind, "rate_rps": share * capacity,
                                  **start, **summarize([r for r in got if r.kind == kind])})

        arrivals = plan(ISOLATION_FACTOR * requests, ISOLATION_LOAD * capacity, budgets, 0.0, seed=23)

        def isolation(app_url: str, tag: str, arrivals: list[tuple[float, str, float]] = arrivals,
                      stream_budget: float = budgets[-1], rate: float = ISOLATION_LOAD * capacity,
                      overhead: float = overhead) -> dict[str, Any]:
            """The same arrivals alone, then beside the long streams; their rows and summaries are
            filed under the scenario names + `tag`."""
            start = settle(app_url, overhead, limit_s)
            alone = asyncio.run(open_loop(app_url, arrivals, MAX_NEW_TOKENS))
            start_beside = settle(app_url, overhead, limit_s)
            beside, long = asyncio.run(open_loop_with_streams(app_url, arrivals, MAX_NEW_TOKENS, LONG_STREAMS,
                                                              stream_budget, LONG_TOKENS, timeout_s=120.0))
            for name, got, st in (("alone", alone, start), ("beside long streams", beside, start_beside)):
                rows.extend(as_dicts(got, scenario=name + tag, load=ISOLATION_LOAD))
                summaries.append({"scenario": name + tag, "load": ISOLATION_LOAD, "kind": GENERATE,
                                  "rate_rps": rate, **st, **summarize(got)})
            return {"long_streams": _long_summary(long), "isolation_noise": paired_share_noise(alone, beside)}

        setup.update(isolation(url, ""))
        setup["decode_slots"] = shipped.model.backend_options.get("decode_slots", 1)
        if baseline_slots is not None:
            run_routed(build_app_from_config(app_config(store, queue_aware=True, proxy_ms=proxy_ms,
                                                        decode_slots=baseline_slots)),
                       http_port=port, name="s2", route_prefix="/s2")
            url2 = f"{base}/s2"
            asyncio.run(closed_loop(url2, [250.0], concurrency=2, requests=20, max_new_tokens=MAX_NEW_TOKENS))
            tag = f" ({baseline_slots} slot{'s' if baseline_slots > 1 else ''})"
            setup["baseline"] = {"decode_slots": baseline_slots, "tag": tag, **isolation(url2, tag)}
            serve.delete("s2")
        if profile_requests:
            setup["profile"] = _profile_isolation(store_for_profile(), port, proxy_ms, profile_requests, limit_s,
                                                  isolation)
        try:
            setup["router_stats"] = httpx.get(f"{url}/v1/stats", timeout=5).json()
        except Exception as e:  # noqa: BLE001 - diagnostics only
            setup["router_stats"] = {"error": f"{type(e).__name__}: {e}"}
        serve.delete("s1")
    return {"setup": setup, "summaries": summaries, "rows": rows, "quick": quick}


def store_for_profile() -> str:
    """A store holding the table built from the bundled profiling results (what `make demo` serves)."""
    from controller.build import build_table_from_results
    from controller.store import TableStore

    store = tempfile.mkdtemp(prefix="bench-streams-profile-")
    TableStore(store).publish(build_table_from_results(PROFILE).table)
    return store


def _profile_isolation(store: str, port: int, proxy_ms: float, requests: int, limit_s: float,
                       isolation: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The isolation scenario on the shipped app over the profile's table: its own budgets (picked
    as scenario 1's are), its own capacity (closed loop, 8 clients, on this queue-aware app: there is
    no static twin of it), then `requests` arrivals a side at ISOLATION_LOAD of that capacity."""
    from ray import serve

    from bench.attainment_load import closed_loop
    from bench.attainment_load import summarize as closed_summary
    from serving.app import build_app_from_config
    from serving.local import run_routed

    run_routed(build_app_from_config(app_config(store, queue_aware=True, proxy_ms=proxy_ms)), http_port=port,
               name="s3", route_prefix="/s3")
    url = f"http://127.0.0.1:{port}/s3"
    try:
        asyncio.run(closed_loop(url, [400.0], concurrency=2, requests=20, max_new_tokens=MAX_NEW_TOKENS))
        asyncio.run(_warm_streams(url, 400.0, 4))
        overhead = settle(url, math.inf).get("overhead_at_start_ms") or proxy_ms
        budgets, knobs = pick_budgets(url, overhead + 2)
        capacity = closed_summary(asyncio.run(closed_loop(url, budgets, concurrency=8, requests=80,
                                                          max_new_tokens=MAX_NEW_TOKENS)))["throughput_rps"]
        rate = ISOLATION_LOAD * capacity
        arrivals = plan(requests, rate, budgets, 0.0, seed=29)
        got = isolation(url, PROFILE_TAG, arrivals=arrivals, stream_budget=budgets[-1], rate=rate, overhead=overhead)
        return {"tag": PROFILE_TAG, "budgets": budgets, "knobs": knobs, "capacity_rps": capacity,
                "idle_overhead_ms": overhead, "requests": requests, **got}
    finally:
        serve.delete("s3")


def _long_summary(long: LongStreams) -> dict[str, Any]:
    return {"finished": long.finished, "chunks": long.chunks, "errors": long.errors[:3],
            "error_count": len(long.errors),
            "first_token_p50_ms": statistics.median(long.first_token_ms) if long.first_token_ms else math.nan,
            "stream_p50_ms": statistics.median(long.stream_ms) if long.stream_ms else math.nan}


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def _rel(new: float, old: float) -> float:
    return (new - old) / old if old and not (math.isnan(new) or math.isnan(old)) else math.nan


def _pick(m: dict[str, Any], scenario: str, kind: str, load: float | None = None) -> dict[str, Any]:
    return next(s for s in m["summaries"] if s["scenario"] == scenario and s["kind"] == kind
                and (load is None or s["load"] == load))


def tables(m: dict[str, Any]) -> list[str]:
    """The two result tables, in Markdown (also what stdout shows)."""
    lines = ["| load | kind | req/s | ok / sent | flagged feasible | met, of feasible | feasible misses | "
             "met, all | mean exp. acc | first token p50 / p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in (s for s in m["summaries"] if s["scenario"] == "mixed"):
        lines.append(f"| {100 * s['load']:.0f}% | {s['kind']} | {s['rate_rps']:.1f} | {s['ok']} / {s['requests']} | "
                     f"{_pct(s['feasible_share'])} | {_pct(s['attainment_when_feasible'])} | {s['feasible_missed']} | "
                     f"{_pct(s['attainment'])} | {s['mean_expected_accuracy']:.3f} | "
                     f"{s['first_token_p50_ms']:.0f} / {s['first_token_p99_ms']:.0f} |")
    lines += _isolation_table(m, "", f"non-streamed at {100 * ISOLATION_LOAD:.0f}% load", _share_noise(m))
    base = m["setup"].get("baseline")
    if base:
        lines += _isolation_table(m, base["tag"], f"baseline{base['tag']}, same arrivals",
                                  float(base.get("isolation_noise", math.nan)))
    prof = m["setup"].get("profile")
    if prof:
        lines += _isolation_table(m, prof["tag"], f"the profile's table, non-streamed at {100 * ISOLATION_LOAD:.0f}%",
                                  float(prof.get("isolation_noise", math.nan)))
    return lines


def _isolation_table(m: dict[str, Any], tag: str, heading: str, noise: float) -> list[str]:
    """The isolation scenario of the app whose scenario names end in `tag`: alone, beside the long
    streams, and the relative change."""
    alone, beside = _pick(m, "alone" + tag, GENERATE), _pick(m, "beside long streams" + tag, GENERATE)
    lines = ["", f"| {heading} | flagged feasible | met, of feasible | mean exp. acc | "
             "first token p50 / p99 ms | proxy + client p50 ms |", "| --- | --- | --- | --- | --- | --- |"]
    for name, s in (("alone", alone), (f"beside {LONG_STREAMS} long streams", beside)):
        lines.append(f"| {name} | {_pct(s['feasible_share'])} | {_pct(s['attainment_when_feasible'])} | "
                     f"{s['mean_expected_accuracy']:.3f} | {s['first_token_p50_ms']:.0f} / "
                     f"{s['first_token_p99_ms']:.0f} | {s['outside_router_p50_ms']:.1f} |")
    fs = _rel(beside["feasible_share"], alone["feasible_share"])
    acc = _rel(beside["mean_expected_accuracy"], alone["mean_expected_accuracy"])
    lines.append(f"| relative change | {_pct(fs)} (chance alone: +-{_pct(noise)}) | | {_pct(acc)} | | |")
    return lines


def paired_share_noise(alone: Sequence[Row], beside: Sequence[Row]) -> float:
    """How far the relative change of the feasible share would move by chance alone, at 95%. Both
    sides send the same arrivals (time and budget), so request i alone and beside the streams is a
    pair; only pairs whose flags differ carry information (McNemar): 1.96 x sqrt(discordant) / n,
    relative to the share alone. NaN where the sides do not pair up."""
    if not alone or len(alone) != len(beside) or any(
            (a.at_s, a.budget_ms) != (b.at_s, b.budget_ms) for a, b in zip(alone, beside, strict=True)):
        return math.nan
    share = sum(bool(a.feasible) for a in alone) / len(alone)
    discordant = sum(bool(a.feasible) != bool(b.feasible) for a, b in zip(alone, beside, strict=True))
    return 1.96 * math.sqrt(discordant) / len(alone) / share if share else math.nan


def _share_noise(m: dict[str, Any]) -> float:
    return float(m["setup"].get("isolation_noise", math.nan))


def notes(m: dict[str, Any]) -> list[str]:
    st, long = m["setup"], m["setup"]["long_streams"]
    out = [
        f"capacity (static table, closed loop, 8 clients, {MAX_NEW_TOKENS} new tokens): {st['capacity_rps']:.1f} "
        f"req/s; {st['requests_per_point']} requests per point, half streamed in scenario 1, "
        f"{ISOLATION_FACTOR * st['requests_per_point']} a side in scenario 2; setup (two apps, "
        f"proxy calibration, budgets, capacity) {st['setup_s']:.0f} s",
        f"budgets {', '.join(f'{b:g}' for b in st['budgets'])} ms, picked from GET /v1/knobs across a frontier of "
        f"{st['knobs'][0]['frontier_size']} configs plus the router's overhead allowance at idle "
        f"({st['idle_overhead_ms']:.1f} ms) + 2 ms; at an idle router they buy "
        + "; ".join(f"{k['budget_ms']:g} ms: {k['config']} ({k['expected_latency_ms']:.0f} ms, acc "
                    f"{k['expected_accuracy']:.3f})" for k in st["knobs"]),
        f"proxy + client time around the router, measured first: p50 {st['proxy_p50_ms']:.1f} ms, p99 "
        f"{st['proxy_ms']:.1f} ms (the app's budget.proxy_overhead_ms)",
        "first token as the client saw it: streamed, the first chunk with text (openai client); "
        "non-streamed, the whole request minus what the replica spent after its first token (decode, and its "
        "pauses while later batch members prefilled)",
        f"long streams beside the non-streamed load: {long['finished']} finished, {long['chunks']} chunks, "
        f"first token p50 {long['first_token_p50_ms']:.0f} ms, a stream p50 {long['stream_p50_ms']:.0f} ms, "
        f"{long['error_count']} errors" + (f" ({long['errors'][0]})" if long["errors"] else ""),
        f"the app's device holds {st.get('decode_slots', 1)} decode batch(es) of different knob pairs at once "
        "(model.backend_options.decode_slots)",
    ]
    base = st.get("baseline")
    if base:
        lb = base["long_streams"]
        out.append(f"baseline{base['tag']}: the same arrivals on an app whose device holds {base['decode_slots']} "
                   f"decode batch(es); its long streams: {lb['finished']} finished, a stream p50 "
                   f"{lb['stream_p50_ms']:.0f} ms, {lb['error_count']} errors")
    prof = st.get("profile")
    if prof:
        lp = prof["long_streams"]
        out.append(f"profile's table ({PROFILE.relative_to(ROOT)}): budgets "
                   f"{', '.join(f'{b:g}' for b in prof['budgets'])} ms, buying at idle "
                   + "; ".join(f"{k['config']} ({k['expected_latency_ms']:.0f} ms)" for k in prof["knobs"])
                   + f"; capacity {prof['capacity_rps']:.1f} req/s (closed loop, 8 clients, this app); "
                   f"{prof['requests']} arrivals a side; its long streams: {lp['finished']} finished, a stream p50 "
                   f"{lp['stream_p50_ms']:.0f} ms, {lp['error_count']} errors")
    odd = [s for s in m["summaries"] if s["flag_mismatch"] or s["flag_missing"] or s["errors"]]
    for s in odd:
        out.append(f"{s['scenario']} {100 * s['load']:.0f}% {s['kind']}: feasible header missing on "
                   f"{s['flag_missing']}, header and body disagree on {s['flag_mismatch']}, errors {s['errors']}")
    for s in m["summaries"]:
        out.append(f"{s['scenario']} {100 * s['load']:.0f}% {s['kind']}: knobs served {s['configs']}, the router "
                   f"resolved for p50 {s['remaining_budget_p50_ms']:.0f} ms of the budget (after wait and overhead); "
                   f"started after {s['settle_s']:.1f} s of settling ({'settled' if s['settled'] else 'NOT settled'}"
                   f", overhead allowance {s['overhead_at_start_ms']} ms, load average {s['loadavg_1m']:.1f})")
    late = max(s["fire_late_p99_ms"] for s in m["summaries"])
    out.append(f"client firing delay (how late the open loop sent a request), worst p99 of a point: {late:.1f} ms")
    return out


def report(m: dict[str, Any]) -> dict[str, Any]:
    """bench/report.py's shape, for run_all."""
    figures = []
    for load in LOADS:
        gen = _pick(m, "mixed", GENERATE, load)
        for kind in (STREAM, GENERATE):
            s = _pick(m, "mixed", kind, load)
            att = s["attainment_when_feasible"]
            figures.append({
                "name": f"{kind} @ {100 * load:.0f}% load: met, of flagged feasible",
                "value": f"{_pct(att)} (feasible {_pct(s['feasible_share'])}, acc {s['mean_expected_accuracy']:.3f})",
                "unit": "",
                "baseline": None if kind == GENERATE else f"{_pct(gen['attainment_when_feasible'])} (feasible "
                                                          f"{_pct(gen['feasible_share'])}, acc "
                                                          f"{gen['mean_expected_accuracy']:.3f})",
                "baseline_name": "" if kind == GENERATE else "non-streamed, same load, same run",
                "goal": f">= {100 * GOAL_ATTAINMENT:g}%",
                "passed": None if math.isnan(att) else att >= GOAL_ATTAINMENT,
            })
    figures += _isolation_figures(m, "", "synthetic grid (decode ~0.75 ms a token)", _share_noise(m))
    prof = m["setup"].get("profile")
    if prof:
        figures += _isolation_figures(m, prof["tag"], "profile's table (decode ~29-44 ms a token)",
                                      float(prof.get("isolation_noise", math.nan)))
    base = m["setup"].get("baseline")
    if base:
        a2, b2 = _pick(m, "alone" + base["tag"], GENERATE), _pick(m, "beside long streams" + base["tag"], GENERATE)
        change = _rel(b2["feasible_share"], a2["feasible_share"])
        figures.append({
            "name": f"the same, on a device of {base['decode_slots']} decode slot(s) (baseline)",
            "value": f"{_pct(b2['feasible_share'])} ({'n/a' if math.isnan(change) else f'{100 * change:+.1f}%'}; "
                     f"chance alone +-{_pct(float(base.get('isolation_noise', math.nan)))})",
            "unit": "", "baseline": _pct(a2["feasible_share"]), "baseline_name": "its arrivals alone, same run",
            "goal": "info", "passed": None,
        })
    return {"title": "Streams and non-streams under open-loop load, client-measured first token (issue 17)"
                     + (" [quick]" if m["quick"] else ""),
            "figures": figures, "notes": notes(m)}


def _isolation_figures(m: dict[str, Any], tag: str, table: str, noise: float) -> list[dict[str, Any]]:
    """The isolation goal's two figures for the scenario filed under `tag`."""
    alone, beside = _pick(m, "alone" + tag, GENERATE), _pick(m, "beside long streams" + tag, GENERATE)
    out = []
    for label, key in (("feasible share", "feasible_share"), ("mean expected accuracy", "mean_expected_accuracy")):
        change = _rel(beside[key], alone[key])
        fmt = _pct if key == "feasible_share" else (lambda x: f"{x:.3f}")
        out.append({
            "name": f"non-streamed {label} beside {LONG_STREAMS} long streams @ {100 * ISOLATION_LOAD:.0f}%, {table}",
            "value": f"{fmt(beside[key])} ({'n/a' if math.isnan(change) else f'{100 * change:+.1f}%'}"
                     + (f"; chance alone +-{_pct(noise)}" if key == "feasible_share" else "")
                     + ")",
            "unit": "", "baseline": fmt(alone[key]), "baseline_name": "the same arrivals alone, same run",
            "goal": f"within {100 * GOAL_CHANGE:g}%",
            "passed": None if math.isnan(change) else abs(change) <= GOAL_CHANGE,
        })
    return out


def run(quick: bool = False, per_point: int | None = None) -> dict[str, Any]:
    """make bench: both isolation tables, no one-slot baseline (the CLI's --baseline-slots)."""
    return report(measure(quick, per_point, profile_requests=90 if quick else PROFILE_REQUESTS))


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_header(command: str, elapsed_s: float) -> str:
    """The first line of a section a benchmark writes: when, which commit (and uncommitted edits of the
    code it measured), the machine's cores, the command and how long it ran."""
    dirty = [line[3:] for line in _git("status", "--porcelain", "--", "serving", "controller", "moe").splitlines()]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Run {when} at commit {_git('rev-parse', '--short', 'HEAD') or 'unknown'}"
            + (f" (uncommitted edits in {', '.join(dirty)})" if dirty else "")
            + f", nproc {os.cpu_count()}, `{command}`, {elapsed_s:.0f} s. Written by the benchmark; rerun it "
              "to replace this section.")


def section(m: dict[str, Any], command: str, elapsed_s: float) -> str:
    head = run_header(command, elapsed_s)
    r = report(m)
    figs = [f"- {f['name']}: {f['value']} (baseline {f['baseline']}, {f['baseline_name']}); goal {f['goal']}: "
            f"{ {True: 'PASS', False: 'FAIL', None: 'info'}[f['passed']] }" for f in r["figures"] if f["baseline"]]
    return "\n".join([f"## {SECTION}", "", head, "", *tables(m), "", *figs, *(f"- {n}" for n in notes(m)), ""])


def write_section(text: str, path: Path = DOC, section: str = SECTION) -> None:
    """Replace the section `section` (its heading up to the next `## `) or append it."""
    old = path.read_text() if path.exists() else ""
    heading = f"## {section}"
    start = old.find(heading)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text + ("" if end < 0 else old[end:])
    path.write_text(new if new.endswith("\n") else new + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer requests per point (30 instead of 80)")
    p.add_argument("--requests", type=int, default=None, help="requests per load point (default 80, --quick 30)")
    p.add_argument("--out", default=None, help="write the raw rows and summaries to this JSON file")
    p.add_argument("--no-doc", action="store_true", help=f"do not write the section to {DOC.relative_to(ROOT)}")
    p.add_argument("--baseline-slots", type=int, default=1,
                   help="also run the isolation scenario on a device with this many decode slots (0: skip)")
    p.add_argument("--profile-requests", type=int, default=PROFILE_REQUESTS,
                   help="arrivals a side for the isolation scenario on the profile's table (0: skip)")
    a = p.parse_args(argv)
    if a.profile_requests != 0 and not 10 <= a.profile_requests <= 100_000:
        raise SystemExit(f"bench_streams: error: --profile-requests={a.profile_requests} must be 0 or in [10, 100000]")
    if not 0 <= a.baseline_slots <= 4:
        raise SystemExit(f"bench_streams: error: --baseline-slots={a.baseline_slots} must be in [0, 4]")
    if a.requests is not None and not 10 <= a.requests <= 100_000:
        raise SystemExit(f"bench_streams: error: --requests={a.requests} must be in [10, 100000]")
    command = " ".join(["python -m bench.bench_streams", *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    m = measure(a.quick, a.requests, baseline_slots=a.baseline_slots or None,
                profile_requests=a.profile_requests or None)
    elapsed = time.perf_counter() - started
    r = report(m)
    print(r["title"])
    print("\n".join(tables(m)))
    for f in r["figures"]:
        mark = {True: "PASS", False: "FAIL", None: "info"}[f["passed"]]
        base = f"  baseline {f['baseline']} ({f['baseline_name']})" if f.get("baseline") is not None else ""
        print(f"  {f['name']:<58} {f['value']}{base}  goal {f['goal']}  {mark}")
    for n in r["notes"]:
        print(f"  note: {n}")
    print(f"  ({elapsed:.0f} s)")
    if a.out:
        Path(a.out).write_text(json.dumps(m, indent=1, default=str))
    if not a.no_doc:
        write_section(section(m, command, elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
