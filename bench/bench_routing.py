"""Replica choice across replicas on the CPU (issue 20): the budget-aware ReplicaChooser against
HAProxy's own choice (leastconn), in the same run.

    python -m bench.bench_routing [--quick] [--out rows.json] [--no-doc]

A real local Serve runs the shipped CPU app (bench_streams.app_config: configs/serving_local.yaml with
queue-aware resolve, deadline order and late binding; the simulated model in table mode at latency
scale 1, 16 new tokens decoded per token, one request per backend call, bench_attainment's synthetic
p99 table) on topology model_ingress with 3 MoEModel replicas, the one of rank 1 twice as slow
(`slow_replica_ranks`). Two apps side by side: `chooser` (model.routing.ingress_chooser: HAProxy asks
the ReplicaChooser, which runs the budget-aware request router on the replicas' reports) and
`haproxy` (HAProxy picks the replica itself).

1. The chooser's cost per request: the same apps with a model that answers at once, one client, one
   request at a time, alternating between them: the time outside the doors (client round trip minus
   the doors' own total), p50 and p99. The load apps budget that p99 without the chooser as
   budget.proxy_overhead_ms, the chooser app that plus its hop's p50 (the hop is outside the doors'
   clock; p99s of a few hundred requests on a shared 2-core box differ by more than the hop).
2. Open-loop Poisson load of POST /v1/generate over four budgets picked from GET /v1/knobs across
   the table's frontier, rising in steps; the two apps take turns at each rate. A policy's
   throughput at 99% is the answered req/s of its highest step, before the first one that failed,
   whose first tokens flagged feasible (X-Budget-Feasible) met their budget >= 99% of the time (the
   client's first token: bench.stream_load.generate); the mean expected accuracy is that step's.
   Beside it, what the doors flagged feasible and the requests that met their budget per second:
   a policy that flags less feasible passes the goal more easily.

Prints a table and writes the section SECTION at the end of docs/BENCHMARKS.latest.md (replaced if there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.bench_streams import app_config, pick_budgets, run_header, settle, write_section
from bench.stream_load import Row, as_dicts, generate, open_loop, plan, summarize

SECTION = "Replica choice across replicas (issue 20), CPU"
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.latest.md"  # as bench_streams: never the record
POLICIES = ("haproxy", "chooser")  # app names: HAProxy's leastconn, the budget-aware chooser
REPLICAS, SLOW = 3, {1: 2.0}
MAX_NEW_TOKENS = 16
GOAL = 0.99
RATES = (8.0, 12.0, 16.0, 20.0, 25.0, 30.0, 38.0)  # req/s, offered
STEP_S = {False: 6.0, True: 3.0}  # each step's window (by --quick): requests = rate x this, at least MIN_STEP
# About two thirds are flagged feasible: 160 requests make ~100 of them, so that one late first token
# (on this shared 2-core box, often an overhead tail outside the replica) does not decide a step.
MIN_STEP = {False: 160, True: 60}
COST_REQUESTS = {False: 400, True: 150}  # per app, one at a time
PAUSE_S = 2.0  # between steps: queues drain, the replicas report again


def _config(store: str, chooser: bool, proxy_ms: float, latency_scale: float) -> Any:
    from serving.config import ServingConfig

    base = app_config(store, queue_aware=True, proxy_ms=proxy_ms).model_dump(mode="json")
    model = base["model"]
    model["backend_options"] |= {"latency_scale": latency_scale, "slow_replica_ranks": SLOW}
    model["routing"] = {**model.get("routing", {}), "ingress_chooser": chooser}
    return ServingConfig.model_validate({**base, "topology": "model_ingress", "model": model})


def _deploy(store: str, port: int, name: str, *, proxy_ms: float, latency_scale: float) -> str:
    from serving.app import build_app_from_config
    from serving.local import run_routed

    config = _config(store, name == "chooser", proxy_ms, latency_scale)
    run_routed(build_app_from_config(config, replicas={"MoEModel": REPLICAS}), http_port=port, name=name,
               route_prefix=f"/{name}")
    return f"http://127.0.0.1:{port}/{name}"


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else math.nan


async def _one_at_a_time(urls: dict[str, str], n: int, budget: float) -> dict[str, list[Row]]:
    """`n` requests per app, one in flight at a time, the apps alternating."""
    import httpx

    rows: dict[str, list[Row]] = {name: [] for name in urls}
    async with httpx.AsyncClient(timeout=30) as c:
        for _ in range(n):
            for name, url in urls.items():
                rows[name].append(await generate(c, url, budget, MAX_NEW_TOKENS, 0.0, 0.0))
    return rows


def measure_cost(urls: dict[str, str], n: int) -> dict[str, Any]:
    """Time outside the doors per app (client round trip - the doors' total), after a warm-up."""
    asyncio.run(_one_at_a_time(urls, 10, 500.0))
    rows = asyncio.run(_one_at_a_time(urls, n, 500.0))
    out: dict[str, Any] = {}
    for name, got in rows.items():
        outside = [r.total_ms - r.router_ms for r in got if r.status == 200 and r.router_ms is not None]
        total = [r.total_ms for r in got if r.status == 200]
        out[name] = {"outside_p50_ms": _quantile(outside, 0.5), "outside_p99_ms": _quantile(outside, 0.99),
                     "total_p50_ms": _quantile(total, 0.5), "ok": len(total), "sent": len(got)}
    out["hop_p50_ms"] = out["chooser"]["outside_p50_ms"] - out["haproxy"]["outside_p50_ms"]
    out["hop_p99_ms"] = out["chooser"]["outside_p99_ms"] - out["haproxy"]["outside_p99_ms"]
    return out


def _chooser_counts(app: str) -> dict[str, int]:
    from ray import serve

    try:
        return dict(serve.get_deployment_handle("ReplicaChooser", app).stats.remote().result(timeout_s=10))
    except Exception as e:  # noqa: BLE001 - diagnostics only
        return {"error": f"{type(e).__name__}"}  # type: ignore[dict-item]


def measure(quick: bool = False) -> dict[str, Any]:
    """Start a local Serve; the hop's cost, then the rising load; the raw rows and summaries."""
    from ray import serve

    from bench.bench_attainment import bench_table
    from controller.store import TableStore
    from serving.local import free_port, local_serve

    started = time.monotonic()
    store = tempfile.mkdtemp(prefix="bench-routing-")
    TableStore(store).publish(bench_table())
    port = free_port()
    setup: dict[str, Any] = {"replicas": REPLICAS, "slow_replica_ranks": SLOW}
    rows: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    with local_serve(port, num_cpus=2 * (REPLICAS + 1), quiet=True):
        # 1. the hop's cost: a model that answers at once, so only the path is timed
        urls = {name: _deploy(store, port, name, proxy_ms=1.0, latency_scale=0.0) for name in POLICIES}
        setup["cost"] = cost = measure_cost(urls, COST_REQUESTS[quick])
        for name in POLICIES:
            serve.delete(name)
        # 2. the load apps: the path's p99 outside the doors, and the chooser's hop on top for its app
        base = max(1.0, cost["haproxy"]["outside_p99_ms"])
        allowance = {"haproxy": round(base, 1), "chooser": round(base + max(0.0, cost["hop_p50_ms"]), 1)}
        setup["proxy_overhead_ms"] = allowance
        urls = {name: _deploy(store, port, name, proxy_ms=allowance[name], latency_scale=1.0) for name in POLICIES}
        for url in urls.values():  # every replica serves a few calls and measures its first-token ratio
            asyncio.run(open_loop(url, plan(40, 8.0, [400.0], 0.0, seed=1), MAX_NEW_TOKENS))
        # the frontier plus what the doors take off a budget at idle (allowance + their own measured
        # overhead, GET /v1/stats; the larger of the two apps') and 2 ms: one budget list for both
        idle = {name: round(settle(url, math.inf).get("overhead_at_start_ms") or allowance[name], 1)
                for name, url in urls.items()}
        setup["idle_overhead_ms"] = idle
        budgets, knobs = pick_budgets(urls["haproxy"], max(idle.values()) + 2)
        setup.update(budgets=budgets, knobs=knobs, setup_s=time.monotonic() - started)
        failed: set[str] = set()
        for i, rate in enumerate(RATES):
            arrivals = plan(max(MIN_STEP[quick], int(rate * STEP_S[quick])), rate, budgets, 0.0, seed=100 + i)
            for name in POLICIES:
                if name in failed:
                    continue
                time.sleep(PAUSE_S)
                got = asyncio.run(open_loop(urls[name], arrivals, MAX_NEW_TOKENS))
                s = summarize(got)
                rows += as_dicts(got, policy=name, rate_rps=rate)
                answered, met = _throughput(got)
                steps.append({"policy": name, "rate_rps": rate, "answered_rps": answered, "met_rps": met,
                              "loadavg_1m": os.getloadavg()[0], **s})
                if not s["attainment_when_feasible"] >= GOAL:
                    failed.add(name)
            if failed == set(POLICIES):
                break
        setup["chooser_counts"] = _chooser_counts("chooser")
        for name in POLICIES:
            serve.delete(name)
    return {"setup": setup, "steps": steps, "rows": rows, "quick": quick}


def _throughput(rows: Sequence[Row]) -> tuple[float, float]:
    """Answered requests, and those that met their budget, per second over the window: first
    arrival to last answer."""
    ok = [r for r in rows if r.status == 200]
    if not ok:
        return 0.0, 0.0
    span = max(r.at_s + r.total_ms / 1000 for r in rows) - min(r.at_s for r in rows)
    if span <= 0:
        return math.nan, math.nan
    return len(ok) / span, sum(r.met for r in rows) / span


def at_goal(m: dict[str, Any], policy: str) -> dict[str, Any] | None:
    """The policy's highest step before its first one under the goal; None if the first failed."""
    best = None
    for s in (s for s in m["steps"] if s["policy"] == policy):
        if not s["attainment_when_feasible"] >= GOAL:
            break
        best = s
    return best


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def table(m: dict[str, Any]) -> list[str]:
    lines = ["| offered req/s | choice | ok / sent | answered req/s | met req/s | flagged feasible | "
             "met, of feasible | feasible misses | met, all | mean exp. acc | first token p50 / p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in m["steps"]:
        lines.append(f"| {s['rate_rps']:g} | {s['policy']} | {s['ok']} / {s['requests']} | {s['answered_rps']:.1f} | "
                     f"{s['met_rps']:.1f} | "
                     f"{_pct(s['feasible_share'])} | {_pct(s['attainment_when_feasible'])} | "
                     f"{s['feasible_missed']} | {_pct(s['attainment'])} | {s['mean_expected_accuracy']:.3f} | "
                     f"{s['first_token_p50_ms']:.0f} / {s['first_token_p99_ms']:.0f} |")
    return lines


def report(m: dict[str, Any]) -> dict[str, Any]:
    """bench/report.py's shape."""
    best = {p: at_goal(m, p) for p in POLICIES}
    cost = m["setup"]["cost"]
    figures: list[dict[str, Any]] = []
    tput = {p: (b["answered_rps"] if b else 0.0) for p, b in best.items()}
    acc = {p: (b["mean_expected_accuracy"] if b else math.nan) for p, b in best.items()}
    figures.append({"name": "throughput at >= 99% of flagged-feasible first tokens met",
                    "value": f"{tput['chooser']:.1f}", "unit": "req/s",
                    "baseline": f"{tput['haproxy']:.1f}", "baseline_name": "HAProxy's leastconn, same run",
                    "goal": "more than the baseline", "passed": tput["chooser"] > tput["haproxy"]})
    figures.append({"name": "mean expected accuracy at that throughput",
                    "value": f"{acc['chooser']:.3f}", "unit": "", "baseline": f"{acc['haproxy']:.3f}",
                    "baseline_name": "HAProxy's leastconn at its own, same run", "goal": "at least the baseline",
                    "passed": None if math.isnan(acc["chooser"]) or math.isnan(acc["haproxy"])
                    else acc["chooser"] >= acc["haproxy"]})
    common = _common_step(m)
    if common is not None:
        c, h = common
        figures.append({"name": f"mean expected accuracy at {c['rate_rps']:g} req/s offered (both >= 99%)",
                        "value": f"{c['mean_expected_accuracy']:.3f}", "unit": "",
                        "baseline": f"{h['mean_expected_accuracy']:.3f}",
                        "baseline_name": "HAProxy's leastconn, same arrivals", "goal": "at least the baseline",
                        "passed": c["mean_expected_accuracy"] >= h["mean_expected_accuracy"]})
    figures.append({"name": "chooser's cost per request: time outside the doors, p50 / p99",
                    "value": f"{cost['chooser']['outside_p50_ms']:.2f} / {cost['chooser']['outside_p99_ms']:.2f}",
                    "unit": "ms",
                    "baseline": f"{cost['haproxy']['outside_p50_ms']:.2f} / {cost['haproxy']['outside_p99_ms']:.2f}",
                    "baseline_name": "no chooser, same run (one client, model answers at once)", "goal": "",
                    "passed": None})
    return {"title": "Replica choice across 3 simulated replicas, one 2x slow: budget-aware chooser vs HAProxy "
                     "(issue 20, CPU)" + (" [quick]" if m["quick"] else ""),
            "figures": figures, "notes": notes(m)}


def _common_step(m: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The highest offered rate at which both policies met the goal: (chooser, haproxy)."""
    ok: dict[float, dict[str, dict[str, Any]]] = {}
    for p in POLICIES:
        for s in m["steps"]:
            if s["policy"] != p:
                continue
            if not s["attainment_when_feasible"] >= GOAL:
                break
            ok.setdefault(s["rate_rps"], {})[p] = s
    both = [r for r, d in ok.items() if len(d) == len(POLICIES)]
    if not both:
        return None
    d = ok[max(both)]
    return d["chooser"], d["haproxy"]


def notes(m: dict[str, Any]) -> list[str]:
    st, cost = m["setup"], m["setup"]["cost"]
    out = [
        f"{st['replicas']} MoEModel replicas per app, ranks {sorted(st['slow_replica_ranks'])} slowed "
        f"{list(st['slow_replica_ranks'].values())}x; topology model_ingress; {MAX_NEW_TOKENS} new tokens; "
        f"steps of max({MIN_STEP[m['quick']]}, rate x {STEP_S[m['quick']]:g} s) requests, Poisson arrivals, "
        "both apps the same "
        f"arrivals; setup {st['setup_s']:.0f} s",
        f"the chooser's hop, one client (model answers at once, {cost['chooser']['sent']} requests an app): "
        f"{cost['hop_p50_ms']:+.2f} ms p50, {cost['hop_p99_ms']:+.2f} ms p99 outside the doors "
        f"({cost['chooser']['outside_p50_ms']:.2f} / {cost['chooser']['outside_p99_ms']:.2f} ms with it, "
        f"{cost['haproxy']['outside_p50_ms']:.2f} / {cost['haproxy']['outside_p99_ms']:.2f} without); round trip "
        f"p50 {cost['chooser']['total_p50_ms']:.2f} vs {cost['haproxy']['total_p50_ms']:.2f} ms",
        f"budget.proxy_overhead_ms per app (p99 outside the doors without the chooser, + the hop's p50 with it): "
        f"{st['proxy_overhead_ms']}",
        f"budgets {', '.join(f'{b:g}' for b in st['budgets'])} ms: the frontier of GET /v1/knobs plus the doors' "
        f"allowance at idle {st['idle_overhead_ms']} ms + 2; at an idle replica they buy "
        + "; ".join(f"{k['budget_ms']:g} ms: {k['config']} ({k['expected_latency_ms']:.0f} ms, acc "
                    f"{k['expected_accuracy']:.3f})" for k in st["knobs"]),
        f"chooser's placements over the run: {st.get('chooser_counts')}",
    ]
    for p in POLICIES:
        b = at_goal(m, p)
        out.append(f"{p}: " + (f"highest step at the goal {b['rate_rps']:g} req/s offered, {b['answered_rps']:.1f} "
                               f"answered, feasible {_pct(b['feasible_share'])}, met all {_pct(b['attainment'])}, "
                               f"knobs {b['configs']}" if b else "the first step missed the goal"))
    late = max((s["fire_late_p99_ms"] for s in m["steps"]), default=math.nan)
    out.append(f"client firing delay, worst p99 of a step: {late:.1f} ms; load average at the steps "
               f"{min(s['loadavg_1m'] for s in m['steps']):.1f}-{max(s['loadavg_1m'] for s in m['steps']):.1f}")
    return out


def run(quick: bool = False) -> dict[str, Any]:
    return report(measure(quick))


def section(m: dict[str, Any], command: str, elapsed_s: float) -> str:
    head = run_header(command, elapsed_s)
    r = report(m)
    figs = [f"- {f['name']}: {f['value']}{' ' + f['unit'] if f['unit'] else ''} (baseline {f['baseline']}, "
            f"{f['baseline_name']}){'; goal ' + f['goal'] + ': ' if f['goal'] else ''}"
            f"{ {True: 'PASS', False: 'FAIL', None: ''}[f['passed']] }" for f in r["figures"]]
    return "\n".join([f"## {SECTION}", "", head, "", *table(m), "", *figs, *(f"- {n}" for n in r["notes"]), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter steps and fewer cost requests")
    p.add_argument("--out", default=None, help="write the raw rows and summaries to this JSON file")
    p.add_argument("--no-doc", action="store_true", help=f"do not write the section to {DOC.relative_to(ROOT)}")
    a = p.parse_args(argv)
    command = " ".join(["python -m bench.bench_routing", *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    m = measure(a.quick)
    elapsed = time.perf_counter() - started
    r = report(m)
    print(r["title"])
    print("\n".join(table(m)))
    for f in r["figures"]:
        mark = {True: "PASS", False: "FAIL", None: "info"}[f["passed"]]
        print(f"  {f['name']:<62} {f['value']} {f['unit']}  baseline {f['baseline']} ({f['baseline_name']})  "
              f"{mark}")
    for n in r["notes"]:
        print(f"  note: {n}")
    print(f"  ({elapsed:.0f} s)")
    if a.out:
        Path(a.out).write_text(json.dumps(m, indent=1, default=str))
    if not a.no_doc:
        write_section(section(m, command, elapsed), DOC, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
