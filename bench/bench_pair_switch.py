"""Knob-pair switches on one device, as on the H100 (issue 17): pair affinity off and on, same arrivals.

    python -m bench.bench_pair_switch [--requests N] [--out rows.json]

The H100 runs of bench.gpu_streams missed budgets where late binding switched the device from one
(top_k, num_active_blocks) pair to another: the engine ran one decode batch at a time, so a switch
waited for the running batch to drain and then holds the running pair's newcomers for its whole
call (93 ms median wait against 23 for the running pair, docs/BENCHMARKS.md). The simulated model
runs the same device (serving.replica.device: one decode batch per slot, newcomers of its pair join
between steps, prefills one after another), so this bench reproduces that on the CPU with an
H100-like table: first tokens 14-55 ms, decode 4 ms a token, 8 tokens a request.

Four apps in one local Serve, the shipped CPU config with the H100 config's batching (8 a batch, no
wait), differing in `model.pair_switch_min_gain` (unset / 0.10), `model.rebind_on_device`, and, for
"both-1slot", a device of one decode slot (the shipped CPU config holds two: `decode_slots`).
Budgets: four points across the frontier plus the idle overhead allowance. Capacity: closed loop on
the first app. Then, per load (25 / 50 / 75% of it), the same Poisson arrivals (half streamed
through the openai client, half /v1/generate) on each app, in alternating order. Per app: feasible
share, attainment of the client-seen first token among the feasible-flagged, mean expected accuracy,
and how often the knob pair changed between consecutive requests (in arrival order) and late binding
kept a pair.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_attainment import grid_table
from bench.bench_streams import SHIPPED, _merge, settle
from bench.gpu_streams import base_budgets
from bench.stream_load import as_dicts, open_loop, plan, summarize

LOADS = (0.25, 0.50, 0.75)
MAX_NEW_TOKENS = 8
# model.pair_switch_min_gain, model.rebind_on_device, decode_slots (None: the shipped config's)
APPS: dict[str, tuple[float | None, bool, int | None]] = {
    "off": (None, False, None), "affinity": (0.10, False, None), "both": (0.10, True, None),
    "both-1slot": (0.10, True, 1)}
DECODE_MS_PER_TOKEN = 4.0
H100 = __import__("yaml").safe_load((SHIPPED.parent / "serving_h100.yaml").read_text())


def h100_like_table(samples: int = 200, jitter: float = 0.05) -> Any:
    """27 configs, first token 14-55 ms (the H100 profile's range: low_4_12 ~14 ms, high_8_16 ~55),
    decode 4 ms a token, p99 latencies; accuracy grows with every knob as in bench_attainment's table."""
    return grid_table(lambda ti, k, b: 14 + 13 * ti + 1.5 * (k - 4) + 1.6 * (b - 12), lambda b: DECODE_MS_PER_TOKEN,
                      DECODE_MS_PER_TOKEN * MAX_NEW_TOKENS, "bench_pair_switch", samples, jitter)


def app_config(store: str, knobs: tuple[float | None, bool, int | None]) -> Any:
    from serving.config import ServingConfig, load_config

    shipped = load_config(SHIPPED).model_dump(mode="json")
    slots = {"decode_slots": knobs[2]} if knobs[2] is not None else {}
    return ServingConfig.model_validate(_merge(shipped, {
        "controller": {"store": store, "poll_interval_s": 0.25},
        "model": {
            "backend_options": {"latency_source": "table", "latency_scale": 1.0, "jitter_sigma": 0.05,
                                "decode": "per_token", "seed": 0, **slots},
            "batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0},
            "scheduling": "deadline", "blocking_miss_budget": H100["model"]["blocking_miss_budget"],
            "pair_switch_min_gain": knobs[0], "rebind_on_device": knobs[1],
        },
    }))


def switches(rows: list[dict[str, Any]]) -> float:
    """Share of consecutive answered requests (arrival order) whose knob pair differs."""
    pairs = ["_".join(r["config"].split("_")[1:]) for r in sorted(rows, key=lambda r: r["at_s"])
             if r["status"] == 200 and r.get("config")]
    return sum(a != b for a, b in zip(pairs, pairs[1:])) / max(1, len(pairs) - 1)


def measure(requests: int) -> dict[str, Any]:
    from ray import serve

    from bench.attainment_load import closed_loop
    from bench.attainment_load import summarize as closed_summary
    from controller.ladder import ladder
    from controller.store import TableStore
    from serving.app import build_app_from_config
    from serving.local import free_port, local_serve, run_routed

    store = tempfile.mkdtemp(prefix="bench-pairs-")
    table = h100_like_table()
    TableStore(store).publish(table)
    port = free_port()
    out: dict[str, Any] = {"requests_per_point": requests, "summaries": [], "rows": []}
    with local_serve(port, num_cpus=8, quiet=True):
        urls = {}
        for name, setting in APPS.items():
            run_routed(build_app_from_config(app_config(store, setting)), http_port=port, name=f"p{name}",
                       route_prefix=f"/p{name}")
            urls[name] = f"http://127.0.0.1:{port}/p{name}"
            asyncio.run(closed_loop(urls[name], [200.0], concurrency=2, requests=20, max_new_tokens=MAX_NEW_TOKENS))
        overhead = settle(urls["off"], math.inf).get("overhead_at_start_ms") or 2.0
        # As bench.gpu_streams picks them: six points across the frontier, plus the idle overhead
        # allowance and one request's time (a request may find one ahead of it).
        solo = asyncio.run(closed_loop(urls["off"], [200.0], concurrency=1, requests=20, max_new_tokens=MAX_NEW_TOKENS))
        per = statistics.median(r.latency_ms for r in solo if r.status == 200)
        frontier = sorted({round(r.latency_ms, 2) for r in ladder(table)})
        budgets = sorted({round(b + overhead + per, 1) for b in base_budgets(frontier)})
        knobs = {"frontier_ms": frontier, "request_ms": per}
        cap = closed_summary(asyncio.run(closed_loop(urls["off"], budgets, concurrency=8, requests=max(60, requests),
                                                     max_new_tokens=MAX_NEW_TOKENS)))
        out.update(budgets=budgets, knobs=knobs, capacity_rps=cap["throughput_rps"], idle_overhead_ms=overhead)
        for i, share in enumerate(LOADS):
            arrivals = plan(requests, share * out["capacity_rps"], budgets, 0.5, seed=31 + i)
            order = list(APPS)[i % len(APPS):] + list(APPS)[:i % len(APPS)]  # each app first once
            for name in order:
                settle(urls[name], overhead + 5)
                handle = serve.get_deployment_handle("MoEModel", f"p{name}")
                counts = handle.dispatch_stats.remote().result()
                got = as_dicts(asyncio.run(open_loop(urls[name], arrivals, MAX_NEW_TOKENS)), app=name, load=share)
                after = handle.dispatch_stats.remote().result()
                kept = after["kept_pair"] - counts["kept_pair"]
                moved = after["rebound_on_device"] - counts["rebound_on_device"]
                out["rows"] += got
                s = summarize([_row(r) for r in got])
                out["summaries"].append({"app": name, "load": share, "rate_rps": share * out["capacity_rps"],
                                         "switch_share": switches(got), "kept_pair": kept,
                                         "rebound_on_device": moved, **s})
                print(f"{100 * share:.0f}% {name}: feasible {s['feasible_share']:.3f}, met of feasible "
                      f"{s['attainment_when_feasible']:.3f}, accuracy {s['mean_expected_accuracy']:.3f}, "
                      f"pair changes {switches(got):.3f}, kept {kept}, rebound on device {moved}", flush=True)
        for name in APPS:
            serve.delete(f"p{name}")
    return out


def _row(d: dict[str, Any]) -> Any:
    from bench.stream_load import Row

    fields = Row.__dataclass_fields__
    return Row(**{k: v for k, v in d.items() if k in fields})


def table(m: dict[str, Any]) -> list[str]:
    lines = ["| load | req/s | app | flagged feasible | met, of feasible | feasible misses | "
             "mean exp. acc | pair changes | kept a pair | rebound on device | first token p50 / p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in m["summaries"]:
        lines.append(f"| {100 * s['load']:.0f}% | {s['rate_rps']:.1f} | {s['app']} | "
                     f"{100 * s['feasible_share']:.1f}% | "
                     f"{100 * s['attainment_when_feasible']:.1f}% | {s['feasible_missed']} | "
                     f"{s['mean_expected_accuracy']:.3f} | {100 * s['switch_share']:.1f}% | {s['kept_pair']} | "
                     f"{s['rebound_on_device']} | "
                     f"{s['first_token_p50_ms']:.0f} / {s['first_token_p99_ms']:.0f} |")
    return lines


GOAL_ATTAINMENT = 0.99


def report(m: dict[str, Any]) -> dict[str, Any]:
    """bench/report.py's shape, for run_all: per load, the app with both settings against the app
    with neither (same arrivals, same run)."""
    figures = []
    for load in LOADS:
        by = {s["app"]: s for s in m["summaries"] if s["load"] == load}

        def fig(s: dict[str, Any]) -> str:
            return (f"{100 * s['attainment_when_feasible']:.1f}% (feasible {100 * s['feasible_share']:.1f}%, "
                    f"acc {s['mean_expected_accuracy']:.3f}, pair changes {100 * s['switch_share']:.0f}%)")

        att = by["both"]["attainment_when_feasible"]
        figures.append({
            "name": f"{100 * load:.0f}% load, affinity + device rebinding: met, of flagged feasible",
            "value": fig(by["both"]), "unit": "", "baseline": fig(by["off"]),
            "baseline_name": "neither setting, same arrivals, same run", "goal": f">= {100 * GOAL_ATTAINMENT:g}%",
            "passed": None if math.isnan(att) else att >= GOAL_ATTAINMENT,
        })
        if "both-1slot" in by:
            figures.append({
                "name": f"{100 * load:.0f}% load, the same on a device of one decode slot",
                "value": fig(by["both-1slot"]), "unit": "", "baseline": fig(by["both"]),
                "baseline_name": "the shipped device's slots, same arrivals, same run", "goal": "info",
                "passed": None,
            })
    return {"title": "Knob-pair switches on one device: pair affinity and device rebinding (issue 17)",
            "figures": figures,
            "notes": [f"capacity {m['capacity_rps']:.1f} req/s, budgets {m['budgets']} ms, "
                      f"{m['requests_per_point']} requests a point and app"]}


def run(quick: bool = False) -> dict[str, Any]:
    return report(measure(40 if quick else 120))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=120, help="requests per load point and app")
    p.add_argument("--out", default=None, help="write the raw rows and summaries to this JSON file")
    a = p.parse_args(argv)
    started = time.monotonic()
    m = measure(a.requests)
    m["wall_s"] = time.monotonic() - started
    print(f"capacity {m['capacity_rps']:.1f} req/s, budgets {m['budgets']}, "
          f"idle overhead {m['idle_overhead_ms']:.1f} ms")
    print("\n".join(table(m)))
    if a.out:
        Path(a.out).write_text(json.dumps(m, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
