"""Serving overhead on the CPU: today's path, Serve's fast path, and a no-op app, in one run.

    python -m bench.bench_overhead_paths [--quick]

Three Ray instances one after another (Serve's path settings are read when Ray's workers start;
serving.fast_path), zero-latency simulated model, clients on 127.0.0.1 with kept-alive connections:
- default path: a no-op app, then the app as it ran before issue 18 (Serve's Python proxy -> Router
  -> actor call -> MoEModel; `topology: router`)
- fast path: a no-op app (the floor), the no-op app idle for the app's batch wait before it answers
  (the floor of a request that waits in its replica, as each of the app's does), the app with
  `topology: router` (HAProxy -> Router -> gRPC -> MoEModel; design (a)) and the app as it deploys
  now (`topology: model_ingress`: HAProxy -> the MoEModel replica, which holds the doors; design (b)).
The order of the instances alternates over rounds so that machine noise hits both alike.
Serving overhead = client time - the replica's arrival-to-first-token (bench/overhead_paths.py).
Goal (issue 18): the app as deployed within 1.3x of the no-op app on the same settings; the ratio to
the waiting no-op app is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOAL_RATIO = 1.3


def _child(path: str, apps: str, n: int, budgets: list[float], out: Path) -> dict[str, Any]:
    from serving.local import free_port

    cmd = [sys.executable, "-m", "bench.overhead_paths", "--path", path, "--apps", apps, "--port", str(free_port()),
           "--n", str(n), "--budgets", ",".join(f"{b:g}" for b in budgets), "--n_each", "10", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    return dict(json.loads(out.read_text()))


def _budgets() -> list[float]:
    """Six budgets across the synthetic table's frontier (first-token ms), tight ones first: where
    the overhead allowance decides which config fits."""
    from tests.support.tables import synthetic_table

    frontier = sorted({c.latency_ms for c in synthetic_table().frontier()})
    picks = [frontier[round(i * (len(frontier) - 1) / 5)] for i in range(6)]
    return [round(f + 6.0, 1) for f in picks]


def _merge(rounds: list[dict[str, Any]], key: str, clients: int, field: str = "overhead_ms") -> dict[str, float]:
    rows = [r[key][clients][field] for r in rounds if key in r]
    return {"p50": round(statistics.median(x["p50"] for x in rows), 3),
            "p99": round(statistics.median(x["p99"] for x in rows), 3)}


def run(quick: bool = False) -> dict[str, Any]:
    rounds, n = (1, 80) if quick else (2, 200)
    budgets = _budgets()
    work = Path(tempfile.mkdtemp(prefix="bench-paths-"))
    got: dict[str, list[dict[str, Any]]] = {"default": [], "fast": []}
    for r in range(rounds):
        order = ("default", "fast") if r % 2 == 0 else ("fast", "default")
        for path in order:
            apps = "noop,app_router" if path == "default" else "noop,noop_wait,app_router,app"
            res = _child(path, apps, n, budgets, work / f"{path}_{r}.json")
            # JSON keys are strings: index the client counts as ints again
            got[path].append({k: ({int(c): v for c, v in d.items() if c.isdigit()} | {"accuracy": d.get("accuracy")})
                              if isinstance(d, dict) else d for k, d in res.items()})
    result: dict[str, Any] = {"rounds": rounds, "requests_per_client": n, "budgets_ms": budgets}
    for path, key, label in (("default", "noop", "noop_default"), ("default", "app_router", "before"),
                             ("fast", "noop", "noop"), ("fast", "noop_wait", "noop_wait"),
                             ("fast", "app_router", "after_a"),
                             ("fast", "app", "after_b")):
        result[label] = {f"clients_{c}": _merge(got[path], key, c) for c in (1, 8)}
        accs = [r[key]["accuracy"]["mean_accuracy"] for r in got[path] if r.get(key, {}).get("accuracy")]
        if accs:
            result[label]["mean_accuracy"] = round(statistics.fmean(accs), 4)
    floor = result["noop"]["clients_1"]["p50"]
    result["ratio_after_a_to_noop_p50"] = round(result["after_a"]["clients_1"]["p50"] / floor, 2)
    result["ratio_after_b_to_noop_p50"] = round(result["after_b"]["clients_1"]["p50"] / floor, 2)
    result["ratio_after_b_to_noop_wait_p50"] = round(
        result["after_b"]["clients_1"]["p50"] / result["noop_wait"]["clients_1"]["p50"], 2)
    result["title"] = "serving overhead by path (issue 18): client - replica first token, zero-latency model"
    result["figures"] = _figures(result)
    return result


def _figures(r: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/report.py's shape: each path's overhead beside its baseline from the same run."""
    out: list[dict[str, Any]] = []
    for c in (1, 8):
        k = f"clients_{c}"
        for label, key in (("before: Router + MoEModel, Serve default path", "before"),
                           ("design (a): Router + MoEModel, fast path", "after_a"),
                           ("as deployed, design (b): MoEModel as ingress, fast path", "after_b")):
            v = r[key][k]
            out.append({"name": f"{label}, {c} client(s), p50 / p99", "value": f"{v['p50']:.2f} / {v['p99']:.2f}",
                        "unit": "ms", "baseline": f"{r['noop'][k]['p50']:.2f} / {r['noop'][k]['p99']:.2f}",
                        "baseline_name": "no-op app, fast path", "passed": None})
    ratio = r["ratio_after_b_to_noop_p50"]
    out.append({"name": "as deployed / no-op, 1 client p50", "value": ratio, "unit": "x", "baseline": 1.0,
                "baseline_name": "no-op app", "goal": f"<= {GOAL_RATIO}x", "passed": ratio <= GOAL_RATIO})
    waiting = r["noop_wait"]["clients_1"]
    out.append({"name": "no-op app idle for the app's batch wait, 1 client, p50 / p99",
                "value": f"{waiting['p50']:.2f} / {waiting['p99']:.2f}", "unit": "ms",
                "baseline": f"{r['noop']['clients_1']['p50']:.2f} / {r['noop']['clients_1']['p99']:.2f}",
                "baseline_name": "no-op app, fast path", "passed": None})
    out.append({"name": "as deployed / no-op idle for the batch wait, 1 client p50",
                "value": r["ratio_after_b_to_noop_wait_p50"], "unit": "x", "baseline": 1.0,
                "baseline_name": "no-op app idle for the batch wait", "passed": None})
    accs = [r[k].get("mean_accuracy") for k in ("before", "after_b")]
    if None not in accs:
        out.append({"name": "mean expected accuracy at six budgets (frontier + 6 ms)", "value": accs[1],
                    "baseline": accs[0], "baseline_name": "before", "goal": ">= before",
                    "passed": accs[1] >= accs[0]})
    return out


def print_result(r: dict[str, Any]) -> None:
    print(f"serving overhead (ms, client - replica first token), {r['rounds']} round(s), zero-latency model")
    print(f"{'path':<34}{'1 client p50':>14}{'p99':>8}{'8 clients p50':>15}{'p99':>8}{'accuracy':>10}")
    names = {"noop_default": "no-op app, Serve default path", "before": "app, Serve default path (before)",
             "noop": "no-op app, fast path (floor)", "noop_wait": "no-op app idle for the batch wait",
             "after_a": "Router + MoEModel, fast path (a)",
             "after_b": "MoEModel as ingress, fast (b)"}
    for key, label in names.items():
        v = r[key]
        acc = v.get("mean_accuracy")
        print(f"{label:<34}{v['clients_1']['p50']:>14.2f}{v['clients_1']['p99']:>8.2f}"
              f"{v['clients_8']['p50']:>15.2f}{v['clients_8']['p99']:>8.2f}{'' if acc is None else f'{acc:.3f}':>10}")
    ok = r["ratio_after_b_to_noop_p50"] <= GOAL_RATIO
    print(f"as deployed (b) / no-op p50: {r['ratio_after_b_to_noop_p50']}x (goal <= {GOAL_RATIO}x: "
          f"{'met' if ok else 'NOT met'}); design (a) / no-op: {r['ratio_after_a_to_noop_p50']}x; "
          f"(b) / no-op idle for the batch wait: {r['ratio_after_b_to_noop_wait_p50']}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    r = run(a.quick)
    print_result(r)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
