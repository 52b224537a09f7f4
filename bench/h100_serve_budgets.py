"""End to end on the serving GPU: profile the grid there, recalibrate a table with that latency,
publish it, start the app from the H100 deploy file with the torch backend, and send requests with
several budgets. Reports, per budget, the knobs chosen, the model latency measured, and the share of
requests that met their budget.

    python -m bench.h100_serve_budgets --preset olmoe-1b-7b --device cuda --out OUT_DIR
    python -m bench.h100_serve_budgets --preset tiny --device cpu --samples 2 --tiers low high \
        --top_k 1 2 --blocks 2 4 --out /tmp/x          # a CPU rehearsal of the same path

Accuracy comes from the bundled SYNTHETIC sample results (random weights have none): the table's
latency half is real and measured on this GPU, its accuracy half is a stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PORT = 8000


def sh(cmd: list[str], log: Path) -> None:
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def lookupctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "lookupctl", *args]


def write_configs(work: Path, store: Path, preset: str, device: str) -> Path:
    serving = yaml.safe_load((ROOT / "configs/serving_h100.yaml").read_text())
    serving["controller"]["store"] = str(store)
    serving["model"]["backend_options"] = {"preset": preset, "device": device, "dtype": "auto", "max_batch_size": 1}
    serving["budget"]["default_budget_ms"] = 1000
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
            d["ray_actor_options"] = {"num_cpus": 2, "num_gpus": 1} if gpu else {"num_cpus": 0.25}
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(deploy))
    return path


def post(budget: float | None, prompt: str, max_new_tokens: int) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"content-type": "application/json"}
    if budget is not None:
        headers["X-Latency-Budget-Ms"] = f"{budget:g}"
    body = json.dumps({"prompt": prompt, "max_new_tokens": max_new_tokens}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}/v1/generate", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


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


def run_budgets(budgets: list[float], n: int, max_new_tokens: int, label: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for b in budgets:
        rows = []
        for i in range(n):
            status, resp, headers = post(b, f"Question {i}: what is shown in the image?", max_new_tokens)
            knobs = {k: headers.get(h) for k, h in (("tier", "x-knob-tier"), ("top_k", "x-knob-top-k"),
                                                    ("blocks", "x-knob-active-blocks"))}
            rows.append({"status": status, "knobs": knobs, "feasible": headers.get("x-budget-feasible"),
                         "model": model_ms(resp), "server_timing": headers.get("server-timing"),
                         "table_version": headers.get("x-table-version"),
                         "expected_latency_ms": resp.get("expected_latency_ms")})
        vp = [r["model"].get("vision", 0) + r["model"].get("prefill", 0) for r in rows if r["model"]]
        tot = [r["model"].get("total", 0) for r in rows if r["model"]]
        s = out[str(b)] = {
            "knobs": sorted({json.dumps(r["knobs"], sort_keys=True) for r in rows}),
            "feasible": sorted({str(r["feasible"]) for r in rows}),
            "ok": sum(r["status"] == 200 for r in rows), "n": len(rows),
            "vision_prefill_p50": round(statistics.median(vp), 1) if vp else None,
            "total_p50": round(statistics.median(tot), 1) if tot else None,
            "met_budget_prefill": round(sum(v <= b for v in vp) / len(vp), 3) if vp else None,
            "rows": rows,
        }
        print(f"[{label}] budget {b:>7} ms -> {s['knobs']} feasible={s['feasible']} ok {s['ok']}/{s['n']} "
              f"vision+prefill p50 {s['vision_prefill_p50']} ms (met {s['met_budget_prefill']}), "
              f"total p50 {s['total_p50']} ms", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="olmoe-1b-7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiers", nargs="+", default=["low", "medium", "high"])
    p.add_argument("--top_k", nargs="+", default=["4", "6", "8"])
    p.add_argument("--blocks", nargs="+", default=["12", "14", "16"])
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--requests_per_budget", type=int, default=12)
    p.add_argument("--max_new_tokens", type=int, default=8)
    p.add_argument("--soak_rounds", type=int, default=4, help="untimed passes over all budgets before measuring")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/h100_serve_budgets")
    work.mkdir(exist_ok=True)
    log = out / "serve_budgets.log"
    store = work / "store"
    profile_dir = work / "core_exp_gpu"

    t = time.time()
    sh(lookupctl("profile", "--backend", "torch", "--preset", a.preset, "--device", a.device,
                 "--dataset", "text_vqa", "--tiers", *a.tiers, "--top-k", *a.top_k, "--blocks", *a.blocks,
                 "--samples", str(a.samples), "--max_new_tokens", str(a.max_new_tokens), "--out", str(profile_dir),
                 "--no_progress"), log)
    profile_s = time.time() - t
    sh(["tar", "czf", str(out / "core_exp_gpu.tgz"), "-C", str(work), "core_exp_gpu"], log)
    # The accuracy half: SYNTHETIC results for the same grid (random weights have no accuracy).
    from controller.core_exp.synthetic import generate_sample_results

    accuracy_dir = work / "accuracy_synthetic"
    generate_sample_results(accuracy_dir, datasets=("text_vqa",), tiers=tuple(a.tiers),
                            top_ks=tuple(int(k) for k in a.top_k), blocks=tuple(int(n) for n in a.blocks),
                            samples_per_config=200, seed=0)
    table = work / "table.json"
    table_p90 = work / "table_p90.json"
    build = ("--results_dir", str(accuracy_dir), "--latency_from", str(profile_dir), "--no_cache")
    sh(lookupctl("build", *build, "--output_file", str(table)), log)
    sh(lookupctl("build", *build, "--output_file", str(table_p90), "--latency_quantile", "0.9"), log)
    sh(lookupctl("publish", str(table), "--store", str(store)), log)
    sh(lookupctl("inspect", "--table", str(table)), log)
    sh(lookupctl("inspect", "--table", str(table_p90)), log)
    from controller import load_table

    tbl = load_table(table)
    frontier = [c.latency_ms for c in tbl.frontier()]
    # Budgets: below every config, at the fastest, across the frontier, and above the slowest.
    picks = sorted({frontier[0] * 0.7, frontier[0] * 1.0, *(frontier[i] for i in
                    (len(frontier) // 3, 2 * len(frontier) // 3)), frontier[-1] * 1.0, frontier[-1] * 1.5})
    budgets = [round(b, 1) for b in picks]

    cfg = write_configs(work, store, a.preset, a.device)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    serve_log = (out / "serve_run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from ray.serve.scripts import cli; sys.exit(cli())",
                             "run", str(cfg)], cwd=ROOT, env=env, stdout=serve_log, stderr=subprocess.STDOUT)
    results: dict[str, Any] = {"budgets": {}, "profile_s": round(profile_s, 1)}
    try:
        results["startup_s"] = round(wait_healthy(420), 1)
        # Soak: every budget's config a few times through the whole path, untimed, so that start-up
        # transients of the freshly started cluster (first seconds after the app turns healthy) are
        # not counted against any one config.
        t_soak = time.time()
        for _ in range(a.soak_rounds):
            for b in budgets:
                post(b, "soak: what is shown in the image?", a.max_new_tokens)
        results["soak_s"] = round(time.time() - t_soak, 1)
        for label, path in (("mean", table), ("p90", table_p90)):
            if label != "mean":  # switch tables live: publish, then wait until the router serves it
                pub = subprocess.run(lookupctl("publish", str(path), "--store", str(store), "--json"), check=True,
                                     capture_output=True, text=True, cwd=ROOT)
                want = json.loads(pub.stdout.strip().splitlines()[-1])["version_id"]
                deadline = time.time() + 60
                while time.time() < deadline:
                    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v1/table", timeout=5) as r:
                        if want in r.read().decode():
                            break
                    time.sleep(0.5)
                time.sleep(2)  # both router and controller replicas
            results["budgets"][label] = run_budgets(budgets, a.requests_per_budget, a.max_new_tokens, label)
        for label, per_budget in results["budgets"].items():
            feasible_rows = [(float(b), r) for b, s in per_budget.items() for r in s["rows"]
                             if r["feasible"] == "true" and r["model"]]
            met = [r["model"]["vision"] + r["model"]["prefill"] <= b for b, r in feasible_rows]
            results[f"share_met_feasible_prefill_{label}"] = round(sum(met) / len(met), 3) if met else None
            print(f"[{label}] share of feasible-budget requests whose vision+prefill met the budget: "
                  f"{results[f'share_met_feasible_prefill_{label}']}", flush=True)
    finally:
        (out / "serve_budgets.json").write_text(json.dumps(results, indent=1))
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if a.device.startswith("cuda"):  # a dedicated GPU host only: elsewhere it stops every cluster
            subprocess.run([sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())",
                            "stop", "--force"], check=False, capture_output=True)
        serve_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
