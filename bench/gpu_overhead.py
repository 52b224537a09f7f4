"""Serving overhead on the GPU host: Serve's default path, its fast path, and a no-op app, one run.

    python -m bench.gpu_overhead --out OUT_DIR [--table TABLE.json] [--n 200]

The graph engine's table is profiled first (bench.gpu_streams.build_table), unless --table names
one. Then two Ray instances, one per Serve path (serving.fast_path), each running
bench/overhead_paths.py with the graph-engine config of configs/serving_h100.yaml:
- default path: the no-op app, then the app as it ran before issue 18 (`topology: router`, Serve's
  Python proxy, actor calls; `budget.proxy_overhead_ms` 9 as configs/serving_h100.yaml had it)
- fast path: the no-op app (the floor), the app with `topology: router` (design (a)) and the app as
  it deploys now (`topology: model_ingress`, design (b)), with the config's own allowance, and (b)
  with a 0.5 ms GIL switch interval in the replica (`app_switch`)
Overhead = client time - replica arrival-to-first-token, one token per request, at 1 and 8
clients; accuracy = the mean expected accuracy the router chose at the six budgets of the GPU
curve (docs/h100/serve_engine_curve_run.json). Writes OUT_DIR/overhead.json in the shape of
docs/h100/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench import gpu_streams as gs

ROOT = Path(__file__).resolve().parents[1]
CURVE_BUDGETS = [33.3, 36.5, 42.7, 50.7, 67.9, 80.1]  # docs/h100/serve_engine_curve_run.json "budgets"
BEFORE_PROXY_OVERHEAD_MS = 9.0  # configs/serving_h100.yaml before issue 18


def serving_config(store: Path, a: argparse.Namespace, proxy_overhead_ms: float | None) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "configs/serving_h100.yaml").read_text())
    cfg["controller"]["store"] = str(store)
    cfg["controller"]["feedback"]["auto"]["enabled"] = False  # one table for the whole run
    options = cfg["model"]["backend_options"]
    options.pop("checkpoint", None)
    options.update(preset=a.preset, engine="graph", device=a.device)
    if proxy_overhead_ms is not None:
        cfg["budget"]["proxy_overhead_ms"] = proxy_overhead_ms
    return cfg


def child(path: str, apps: str, cfg: dict[str, Any], a: argparse.Namespace, work: Path, log: Path) -> dict[str, Any]:
    from serving.local import free_port

    gpu = a.device.startswith("cuda")
    conf = work / f"config_{path}.json"
    conf.write_text(json.dumps({"serving": cfg, "actor_options": {
        "MoEModel": {"num_cpus": 4, "num_gpus": 1} if gpu else {"num_cpus": 1}}}))
    out = work / f"result_{path}.json"
    cmd = [sys.executable, "-m", "bench.overhead_paths", "--path", path, "--apps", apps, "--port", str(free_port()),
           "--config", str(conf), "--n", str(a.n), "--budgets", ",".join(f"{b:g}" for b in CURVE_BUDGETS),
           "--n_each", str(a.n_each), "--out", str(out)]
    gs.phase(f"{path} path: {apps}")
    with log.open("a") as f:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=900)
    return dict(json.loads(out.read_text()))


def pick(row: dict[str, Any], clients: int) -> dict[str, float]:
    o = row[str(clients)]["overhead_ms"]
    return {"p50": o["p50"], "p99": o["p99"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--table", help="a built table JSON (default: profile the grid on this GPU)")
    p.add_argument("--preset", default="olmoe-1b-7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--max_new_tokens", type=int, default=16)
    p.add_argument("--n", type=int, default=200, help="measured requests at 1 client (8 clients: n/4 each)")
    p.add_argument("--n_each", type=int, default=10, help="requests per budget for the accuracy check")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_overhead.log"
    t0 = time.time()
    table = gs.build_table(a, work, log)
    store = work / "store"
    subprocess.run([sys.executable, "-m", "lookupctl", "publish", str(table), "--store", str(store)], check=True,
                   cwd=ROOT, capture_output=True)
    after_cfg = serving_config(store, a, None)
    default = child("default", "noop,app_router", serving_config(store, a, BEFORE_PROXY_OVERHEAD_MS), a, work, log)
    fast = child("fast", "noop,app_router,app,app_switch", after_cfg, a, work, log)
    result = {
        "gpu": gs.card(a.device),
        "noop": pick(fast["noop"], 1),
        "noop_default_path": pick(default["noop"], 1),
        "before": {f"clients_{c}": pick(default["app_router"], c) for c in (1, 8)},
        "after": {f"clients_{c}": pick(fast["app"], c) for c in (1, 8)},
        "design_a": {f"clients_{c}": pick(fast["app_router"], c) for c in (1, 8)},
        # (b) with a 0.5 ms GIL switch interval in the replica (bench/overhead_paths.py app_switch)
        "after_switch": {f"clients_{c}": pick(fast["app_switch"], c) for c in (1, 8)},
        "design": "b",
        "accuracy": {"before": default["app_router"]["accuracy"]["mean_accuracy"],
                     "after": fast["app"]["accuracy"]["mean_accuracy"],
                     "design_a": fast["app_router"]["accuracy"]["mean_accuracy"]},
        "accuracy_per_budget": {"before": default["app_router"]["accuracy"]["per_budget"],
                                "after": fast["app"]["accuracy"]["per_budget"]},
        "budgets_ms": CURVE_BUDGETS,
        "proxy_overhead_ms": {"before": BEFORE_PROXY_OVERHEAD_MS, "after": after_cfg["budget"]["proxy_overhead_ms"]},
        "client_ms": {k: {f"clients_{c}": r[str(c)]["client_ms"] for c in (1, 8)}
                      for k, r in (("noop", fast["noop"]), ("before", default["app_router"]), ("after", fast["app"]),
                                   ("design_a", fast["app_router"]), ("after_switch", fast["app_switch"]))},
        "startup_s": {"before": default["app_router"]["startup_s"], "after": fast["app"]["startup_s"]},
        "wall_s": round(time.time() - t0, 1),
        "raw": {"default": default, "fast": fast},
    }
    (out / "overhead.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
