"""Controller overhead on the request path: the same app with knobs fixed in the router (no
controller) is the baseline; measured against a router-local table copy and a remote batched resolve.

    python -m bench.bench_serving_overhead [--quick]

Concurrency 16, closed loop over HTTP on 127.0.0.1, zero-latency simulated model. Modes are measured
in alternating rounds inside one Ray instance so that machine noise hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

CONCURRENCY = 16
MODES = ("fixed", "local", "remote")
BUDGETS = (60.0, 95.0, 120.0, 170.0, 400.0)


def _measure(url: str, seconds: float, warmup_s: float = 1.0) -> dict[str, float]:
    from tests.support.load import LoadLoop

    with LoadLoop(url, BUDGETS, concurrency=CONCURRENCY) as load:
        time.sleep(warmup_s + seconds)
    t0 = min(s.started for s in load.samples) + warmup_s
    window = [s for s in load.samples if t0 <= s.started <= t0 + seconds]
    ok = [s for s in window if s.status == 200]
    lat = sorted(s.latency_s * 1000 for s in ok)
    return {
        "rps": len(ok) / seconds,
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p99_ms": lat[int(0.99 * (len(lat) - 1))] if lat else float("nan"),
        "failed": len(window) - len(ok),
    }


def _resolve_stats(url: str) -> dict[str, float]:
    """The router's own resolve-time percentiles (µs), from its /v1/stats."""
    import httpx

    try:
        stats = httpx.get(url, timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}
    stack = [stats]
    while stack:
        d = stack.pop()
        if not isinstance(d, dict):
            continue
        r = d.get("resolve_latency_us")
        if isinstance(r, dict) and isinstance(r.get("p50"), (int, float)):
            return {"p50": float(r["p50"]), "p99": float(r.get("p99") or float("nan"))}
        stack.extend(v for v in d.values() if isinstance(v, dict))
    return {}


def run(quick: bool = False) -> dict[str, Any]:

    from controller.store import TableStore
    from serving.app import build_app_from_config
    from serving.config import ServingConfig
    from serving.local import free_port, local_serve, run_routed
    from tests.support.tables import synthetic_table

    rounds, seconds = (2, 4.0) if quick else (5, 6.0)
    store = tempfile.mkdtemp(prefix="bench-store-")
    TableStore(store).publish(synthetic_table())
    port = free_port()
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with local_serve(port):
        for mode in MODES:
            config = ServingConfig.model_validate(
                {
                    "controller": {"store": store, "resolve_mode": mode, "timeout_s": 2.0},
                    "model": {"backend_options": {"latency_scale": 0}},
                }
            )
            run_routed(build_app_from_config(config), http_port=port, name=mode, route_prefix=f"/{mode}")
        order = list(MODES)
        for r in range(rounds):
            # Rotate the order each round so no mode always runs first (or right after another).
            for mode in order[r % len(order):] + order[: r % len(order)]:
                results[mode].append(_measure(f"http://127.0.0.1:{port}/{mode}/v1/generate", seconds))
        resolve_us = _resolve_stats(f"http://127.0.0.1:{port}/local/v1/stats")

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    base_rps, base_p50 = med("fixed", "rps"), med("fixed", "p50_ms")
    figures: list[dict[str, Any]] = [
        {
            "name": "baseline throughput (knobs fixed in router)",
            "value": round(base_rps, 1),
            "unit": "req/s",
            "baseline": None,
            "baseline_name": "",
            "goal": "",
            "passed": None,
        },
        {
            "name": "baseline p50 latency",
            "value": round(base_p50, 3),
            "unit": "ms",
            "baseline": None,
            "baseline_name": "",
            "goal": "",
            "passed": None,
        },
    ]
    def paired(mode: str, key: str, op: Any) -> float:
        """Median over rounds of the same round's comparison with the baseline: drift cancels."""
        return statistics.median(op(m[key], b[key]) for m, b in zip(results[mode], results["fixed"]))

    for mode, label in (("local", "router-local table (default)"), ("remote", "remote batched resolve")):
        ratio = paired(mode, "rps", lambda m, b: m / b)
        added = paired(mode, "p50_ms", lambda m, b: m - b)
        figures += [
            {
                "name": f"{label}: throughput ratio",
                "value": round(ratio, 3),
                "unit": "x",
                "baseline": round(base_rps, 1),
                "baseline_name": "req/s with knobs fixed, same run",
                "goal": ">= 0.85",
                "passed": ratio >= 0.85,
            },
            {
                "name": f"{label}: added p50 latency",
                "value": round(added, 3),
                "unit": "ms",
                "baseline": round(base_p50, 3),
                "baseline_name": "p50 ms with knobs fixed, same run",
                "goal": "<= 1 ms",
                "passed": added <= 1.0,
            },
        ]
    if resolve_us:
        figures.append({
            "name": "router-local resolve time inside each request, p50 / p99",
            "value": f"{resolve_us.get('p50', float('nan')):.0f} / {resolve_us.get('p99', float('nan')):.0f}",
            "unit": "us", "baseline": round(base_p50 * 1000), "baseline_name": "us of the baseline p50 request",
            "goal": "", "passed": None,
        })
    failed = sum(int(r["failed"]) for rs in results.values() for r in rs)
    return {
        "title": "Controller overhead per request (HTTP, concurrency 16, zero-latency simulated model)",
        "figures": figures,
        "raw": results,
        "notes": [
            f"{rounds} rounds of {seconds:g} s per mode, mode order rotated each round; ratios and added p50 are "
            f"medians of per-round comparisons with the same round's baseline; failed requests: {failed}",
            "client, proxy, router and model share the same machine; the ratios, not the absolute req/s, "
            "are what transfers to other hardware",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    result = run(parser.parse_args().quick)
    for f in result["figures"]:
        base = f" (baseline {f['baseline']} {f['baseline_name']})" if f["baseline"] is not None else ""
        goal = f"  goal {f['goal']}: {'PASS' if f['passed'] else 'FAIL'}" if f["goal"] else ""
        print(f"{f['name']}: {f['value']} {f['unit']}{base}{goal}")
    print(json.dumps(result["raw"], indent=1))
    for n in result["notes"]:
        print("note:", n)


if __name__ == "__main__":
    main()
