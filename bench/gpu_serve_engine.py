"""Budget attainment through the Ray Serve app on the GPU, graph engine against eager, one run.

For each engine mode (graph, then eager): profile the 27-config grid through the serving engine
(`lookupctl profile --engine MODE`), build a table from that latency (p95; p99 with --curve, whose
goal is 98% of requests: a p95 table lets 5% of one config's requests run over by definition) (accuracy from the bundled
SYNTHETIC results: random weights have none), publish it, start the app from deploy/serve_h100.yaml
with that engine, and send six budgets across the frontier, >= 30 requests each, first one client
at a time, then 4 concurrent clients with mixed budgets. A request meets its budget when its first
token (vision + prefill, what a first-token budget covers) came within it: measured by the replica
("model") and as the client saw it minus the decode ("client", so router, proxy and queue count).

    python -m bench.gpu_serve_engine --out OUT_DIR [--engines graph eager] [--requests 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PORT = 8000
GRID = {"tiers": ["low", "medium", "high"], "top_k": ["4", "6", "8"], "blocks": ["12", "14", "16"]}


def sh(cmd: list[str], log: Path) -> None:
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def lookupctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "lookupctl", *args]


_conn = threading.local()


def post(budget: float | None, prompt: str, max_new_tokens: int) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request on this thread's kept-alive connection (as an HTTP client library would keep
    it: a new TCP connection per request would be the client's cost, not the server's)."""
    headers = {"content-type": "application/json"}
    if budget is not None:
        headers["X-Latency-Budget-Ms"] = f"{budget:g}"
    body = json.dumps({"prompt": prompt, "max_new_tokens": max_new_tokens}).encode()
    for attempt in (0, 1):  # a connection the server closed is opened again, once
        conn = getattr(_conn, "c", None)
        if conn is None:
            conn = _conn.c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
        try:
            conn.request("POST", "/v1/generate", body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            _conn.c = None
            if attempt:
                raise
            continue
        try:
            parsed = json.loads(data or b"{}")
        except ValueError:
            parsed = {}
        return r.status, parsed, {k.lower(): v for k, v in r.getheaders()}
    raise AssertionError("unreachable")


def wait_healthy(deadline_s: float) -> float:
    t0 = time.time()
    while time.time() - t0 < deadline_s:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=2) as r:
                if r.status == 200:
                    return time.time() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise TimeoutError(f"app not healthy after {deadline_s} s")


def model_ms(resp: dict[str, Any]) -> dict[str, float]:
    """The model's own stage timings, wherever the response nests them."""
    stack = [resp]
    while stack:
        d = stack.pop()
        if isinstance(d, dict):
            t = d.get("timings_ms")
            if isinstance(t, dict) and "prefill" in t:
                return {k: float(v) for k, v in t.items()}
            stack.extend(v for v in d.values() if isinstance(v, dict))
    return {}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def write_configs(work: Path, store: Path, engine: str, preset: str, device: str) -> Path:
    serving = yaml.safe_load((ROOT / "configs/serving_h100.yaml").read_text())
    serving["controller"]["store"] = str(store)
    options = serving["model"]["backend_options"]
    options.pop("checkpoint", None)
    options.update(preset=preset, engine=engine, device=device)
    # One table for the whole measurement: no automatic recalibration mid-run.
    serving["controller"]["feedback"]["auto"]["enabled"] = False
    (work / "serving.yaml").write_text(yaml.safe_dump(serving))
    deploy = yaml.safe_load((ROOT / "deploy/serve_h100.yaml").read_text())
    deploy["http_options"] = {"host": "127.0.0.1", "port": PORT}
    app = deploy["applications"][0]
    app["args"] = {"config_path": str(work / "serving.yaml"), "store": str(store)}
    gpu = device.startswith("cuda")
    for d in app["deployments"]:
        if not gpu:  # a CPU rehearsal on a small machine: fractional CPUs so that everything fits
            d["ray_actor_options"] = {"num_cpus": 0.25}
        if d["name"] == "Router":
            d["num_replicas"] = 1
        if d["name"] == "LookupController":
            d["user_config"]["store"] = str(store)
        if d["name"] == "MoEModel":
            d.pop("autoscaling_config", None)
            d["num_replicas"] = 1
            d["ray_actor_options"] = {"num_cpus": 4, "num_gpus": 1} if gpu else {"num_cpus": 0.25}
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(deploy))
    return path


def one(budget: float, i: int, max_new_tokens: int) -> dict[str, Any]:
    t = time.perf_counter()
    status, resp, headers = post(budget, f"Question {i}: what is shown in the image?", max_new_tokens)
    client_ms = (time.perf_counter() - t) * 1e3
    m = model_ms(resp)
    output = resp.get("output") if isinstance(resp.get("output"), dict) else {}
    return {
        "budget": budget, "status": status, "client_ms": client_ms, "model": m, "crops": output.get("crops"),
        "config": "_".join(headers.get(h, "?") for h in ("x-knob-tier", "x-knob-top-k", "x-knob-active-blocks")),
        "feasible": headers.get("x-budget-feasible"), "server_timing": headers.get("server-timing"),
        "accuracy": resp.get("expected_accuracy"), "bound_at": resp.get("knobs_bound_at"),
        "table_version": headers.get("x-table-version"),
        # Where the time outside the model went (see breakdown()).
        "router_ms": (resp.get("timings_ms") or {}).get("total"),
        "call_ms": (resp.get("timings_ms") or {}).get("model"),
        "replica_ms": output.get("replica_ms"), "service_ms": output.get("service_ms"),
        "queue_wait_ms": output.get("queue_wait_ms"), "overhead_budgeted_ms": resp.get("overhead_ms"),
        "remaining_budget_ms": resp.get("remaining_budget_ms"),
    }


def breakdown(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The serving overhead by layer, p50 / p99 ms: client + proxy (client time minus the router's),
    the router's own work, the handle's transport both ways (the router's call minus the replica's
    time), the replica around its backend call (minus queue wait), and the backend around the
    engine's timed stages (tokenizing, copies, thread hop)."""
    parts: dict[str, list[float]] = {}
    for r in rows:
        needed = (r.get("router_ms"), r.get("call_ms"), r.get("replica_ms"), r.get("service_ms"))
        if r["status"] != 200 or not r["model"] or None in needed:
            continue
        for name, ms in (
            ("client_proxy", r["client_ms"] - r["router_ms"]),
            ("router", r["router_ms"] - r["call_ms"]),
            ("handle", r["call_ms"] - r["replica_ms"]),
            ("replica", r["replica_ms"] - r["service_ms"] - (r["queue_wait_ms"] or 0.0)),
            ("backend", r["service_ms"] - r["model"]["total"]),
            ("total", r["client_ms"] - r["model"]["total"] - (r["queue_wait_ms"] or 0.0)),
        ):
            parts.setdefault(name, []).append(ms)
    return {k: {"p50": round(pct(v, 50), 2), "p90": round(pct(v, 90), 2), "p99": round(pct(v, 99), 2), "n": len(v)}
            for k, v in parts.items()}


def run_mode(budgets: list[float], n: int, clients: int, max_new_tokens: int) -> list[dict[str, Any]]:
    jobs = [(b, i) for b in budgets for i in range(n)]
    random.Random(clients).shuffle(jobs)
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not jobs:
                    return
                b, i = jobs.pop()
            row = one(b, i, max_new_tokens)
            with lock:
                rows.append(row)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == 200 and r["model"]]
    feas = [r for r in ok if r["feasible"] == "true"]

    def first_token_model(r: dict[str, Any]) -> float:
        return r["model"]["vision"] + r["model"]["prefill"]

    def first_token_client(r: dict[str, Any]) -> float:
        return r["client_ms"] - r["model"]["decode"]

    per_budget = {}
    for b in sorted({r["budget"] for r in rows}):
        rs = [r for r in ok if r["budget"] == b]
        per_budget[str(b)] = {
            "n": len([r for r in rows if r["budget"] == b]), "ok": len(rs),
            "configs": sorted({r["config"] for r in rs}), "feasible": sorted({str(r["feasible"]) for r in rs}),
            "first_token_model_p50": statistics.median(first_token_model(r) for r in rs) if rs else None,
            "first_token_client_p50": statistics.median(first_token_client(r) for r in rs) if rs else None,
        }
    accuracies = [r["accuracy"] for r in ok if isinstance(r.get("accuracy"), (int, float))]
    return {
        "requests": len(rows), "ok": len(ok), "feasible": len(feas),
        # Every request counts (an error or a late answer is a miss): the attainment a client sees.
        "attainment_client": sum(first_token_client(r) <= r["budget"] for r in ok) / len(rows) if rows else None,
        "mean_expected_accuracy": statistics.fmean(accuracies) if accuracies else None,
        "rebound": sum(r.get("bound_at") == "replica" for r in ok),
        "met_model": sum(first_token_model(r) <= r["budget"] for r in feas) / len(feas) if feas else None,
        "met_client": sum(first_token_client(r) <= r["budget"] for r in feas) / len(feas) if feas else None,
        "per_budget": per_budget,
    }


def per_config_spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Vision + prefill per (config, crop count): one input shape each, so the spread is the
    engine's own (crop counts inside a tier differ by up to 3x in vision work)."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if r["status"] == 200 and r["model"]:
            by.setdefault(f"{r['config']}/crops{r['crops']}", []).append(r["model"]["vision"] + r["model"]["prefill"])
    return {c: {"n": len(v), "p50": statistics.median(v), "p99": pct(v, 99),
                "p99_over_p50": pct(v, 99) / statistics.median(v)} for c, v in sorted(by.items()) if len(v) >= 8}


def one_engine(engine: str, a: argparse.Namespace, out: Path, accuracy_dir: Path) -> dict[str, Any]:
    work = Path(f"/tmp/gpu_serve_engine/{engine}")
    work.mkdir(parents=True, exist_ok=True)
    log = out / f"serve_{engine}.log"
    store, profile_dir = work / "store", work / "core_exp"
    res: dict[str, Any] = {"engine": engine}
    t = time.time()
    sh(lookupctl("profile", "--backend", "torch", "--preset", a.preset, "--device", a.device,
                 "--engine", engine, "--dataset", "text_vqa", "--tiers", *GRID["tiers"], "--top-k", *GRID["top_k"],
                 "--blocks", *GRID["blocks"], "--samples", str(a.samples), "--max_new_tokens", str(a.max_new_tokens),
                 "--out", str(profile_dir), "--no_progress"), log)
    res["profile_s"] = round(time.time() - t, 1)
    quantile = "0.99" if a.curve else "0.95"
    table = work / f"table_p{quantile[2:]}.json"
    sh(lookupctl("build", "--results_dir", str(accuracy_dir), "--latency_from", str(profile_dir), "--no_cache",
                 "--latency_quantile", quantile, "--output_file", str(table)), log)
    res["latency_quantile"] = float(quantile)
    sh(lookupctl("publish", str(table), "--store", str(store)), log)
    from controller import load_table

    frontier = [c.latency_ms for c in load_table(table).frontier()]
    res["frontier_ms"] = [round(x, 2) for x in frontier]
    # Six budgets across the frontier: between neighbouring frontier latencies (a budget is a
    # user's number, not a table entry), the fastest config's with 5% room, the slowest's x 1.2;
    # each plus the serving overhead measured below (the router resolves for what is left).
    idx = sorted({round(i * (len(frontier) - 2) / 4) for i in range(1, 5)})
    base = [frontier[0] * 1.05] + [(frontier[i] + frontier[i + 1]) / 2 for i in idx] + [frontier[-1] * 1.2]
    cfg = write_configs(work, store, engine, a.preset, a.device)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", **dict(kv.split("=", 1) for kv in a.serve_env))
    serve_log = (out / f"serve_run_{engine}.log").open("w")
    t = time.time()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from ray.serve.scripts import cli; sys.exit(cli())",
                             "run", str(cfg)], cwd=ROOT, env=env, stdout=serve_log, stderr=subprocess.STDOUT)
    try:
        res["startup_s"] = round(wait_healthy(480), 1)
        soak = [one(b, i, a.max_new_tokens) for i in range(a.soak) for b in base]  # untimed, fresh cluster
        # Client first token minus the replica's: proxy, router, handle, batching (p95 of the soak).
        # The first round is a cold start (first calls through every handle): not overhead.
        gaps = [r["client_ms"] - r["model"]["decode"] - r["model"]["vision"] - r["model"]["prefill"]
                for r in soak[len(base):] if r["status"] == 200 and r["model"]]
        res["serving_overhead_ms"] = {"p50": statistics.median(gaps), "p95": pct(gaps, 95)} if gaps else None
        res["serving_overhead_by_layer_ms"] = breakdown(soak[len(base):])
        print(f"[{engine}] soak overhead by layer: {res['serving_overhead_by_layer_ms']}", flush=True)
        extra = pct(gaps, 95) if gaps else 0.0
        budgets = sorted({round(b + extra, 1) for b in base})
        res["budgets"] = budgets

        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v1/stats", timeout=10) as r:
            res["stats_model"] = json.loads(r.read()).get("model")
        if a.curve:  # attainment against concurrency: budgets get room for the requests ahead
            per = statistics.median(r["client_ms"] for r in soak if r["status"] == 200)
            res["curve"] = {}
            for c in a.curve:
                cb = sorted({round(b + (c - 1) * per, 1) for b in budgets})
                rows = run_mode(cb, a.requests, c, a.max_new_tokens)
                s = summarise(rows)
                res.setdefault("curve_rows", {})[str(c)] = rows
                keys = ("requests", "ok", "feasible", "attainment_client", "mean_expected_accuracy", "met_model",
                        "met_client")
                res["curve"][str(c)] = {k: s[k] for k in keys}
                res["curve"][str(c)]["budgets"] = cb
                res["curve"][str(c)]["overhead_ms"] = breakdown(rows)
                print(f"[{engine}] {c} clients: {res['curve'][str(c)]}", flush=True)
            return res
        seq = run_mode(budgets, a.requests, 1, a.max_new_tokens)
        # 4 closed-loop clients: about 3 requests ahead of each, so the concurrent budgets get that
        # much room (3 x the soak's median whole request); the router resolves for what is left.
        room = 3 * statistics.median(r["client_ms"] for r in soak if r["status"] == 200)
        res["concurrent_budgets"] = conc_budgets = sorted({round(b + room, 1) for b in budgets})
        conc = run_mode(conc_budgets, a.requests, 4, a.max_new_tokens)
        res["sequential"], res["concurrent"] = summarise(seq), summarise(conc)
        res["served_vision_prefill_per_config"] = per_config_spread(seq + conc)
        res["rows"] = {"sequential": seq, "concurrent": conc}
        print(f"[{engine}] profile {res['profile_s']} s, start {res['startup_s']} s, overhead "
              f"{res['serving_overhead_ms']}, budgets {budgets}", flush=True)
        for c, v in res["served_vision_prefill_per_config"].items():
            print(f"   {c}: n {v['n']} p50 {v['p50']:.2f} p99/p50 {v['p99_over_p50']:.3f}", flush=True)
        for mode in ("sequential", "concurrent"):
            s = res[mode]
            print(f"[{engine}] {mode}: ok {s['ok']}/{s['requests']}, feasible {s['feasible']}, met (model) "
                  f"{s['met_model']}, met (client) {s['met_client']}", flush=True)
            for b, pb in s["per_budget"].items():
                print(f"   {b:>8} ms -> {pb['configs']} feasible={pb['feasible']} first token p50 model "
                      f"{pb['first_token_model_p50']:.1f} client {pb['first_token_client_p50']:.1f}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if a.device.startswith("cuda"):  # a dedicated GPU host: on a shared machine this would
            # stop every Ray cluster, other people's test runs included
            subprocess.run([sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())",
                            "stop", "--force"], check=False, capture_output=True)
        serve_log.close()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--engines", nargs="+", default=["graph", "eager"], choices=["graph", "eager"])
    # 24: enough for the table's p99 to see every crop count of a tier (with 6, the 3-crop
    # requests of the fastest config ran 0.5 ms over a p99 measured on 1- and 2-crop ones).
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--requests", type=int, default=30, help="per budget and mode")
    p.add_argument("--max_new_tokens", type=int, default=8)
    p.add_argument("--soak", type=int, default=3)
    p.add_argument("--preset", default="olmoe-1b-7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--small_grid", action="store_true", help="2 x 2 x 2 configs (a CPU rehearsal)")
    p.add_argument("--curve", nargs="+", type=int, default=None,
                   help="instead of sequential + 4 clients: attainment at each of these client counts")
    p.add_argument("--serve_env", nargs="*", default=[], metavar="NAME=VALUE",
                   help="environment for `serve run` and so for every Ray process it starts")
    a = p.parse_args(argv)
    if bad := [kv for kv in a.serve_env if "=" not in kv]:
        p.error(f"--serve_env {bad[0]!r}: expected NAME=VALUE")
    if a.small_grid:
        GRID.update(tiers=["low", "medium"], top_k=["4", "8"], blocks=["12", "16"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from controller.core_exp.synthetic import generate_sample_results

    accuracy_dir = Path("/tmp/gpu_serve_engine/accuracy_synthetic")
    generate_sample_results(accuracy_dir, datasets=("text_vqa",), tiers=tuple(GRID["tiers"]),
                            top_ks=tuple(int(k) for k in GRID["top_k"]), blocks=tuple(int(n) for n in GRID["blocks"]),
                            samples_per_config=200, seed=0)
    results: dict[str, Any] = {}
    for engine in a.engines:
        try:
            results[engine] = one_engine(engine, a, out, accuracy_dir)
        except Exception as e:  # noqa: BLE001 - keep what the other engine measured
            results[engine] = {"error": f"{type(e).__name__}: {e}"}
            print(f"[{engine}] failed: {e}", flush=True)
        (out / "serve_engine.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
