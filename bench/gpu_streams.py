"""Issue 17 on the GPU: streamed and non-streamed requests under open-loop load, tree against tree.

One p99 table (the graph engine profiled through itself, as `bench.gpu_serve_engine --curve` does)
serves every tree: a directory holding a checkout of the code ("before": an export of an older
commit; "after": the repo root). For each tree the app from deploy/serve_h100.yaml starts from that
tree (cwd and PYTHONPATH), a closed loop measures its capacity, and Poisson arrivals at fractions of
that capacity send half the requests as streams through the official openai client (/v1/completions,
stream=True, first token = the first chunk with text, as the client saw it) and half as POST
/v1/generate (first token = the client's time minus the replica's time after its first token, or
the decode the model reported where a tree does not report that). Per tree, rate
and kind: the share flagged feasible (X-Budget-Feasible), attainment among those (goal >= 99%) and
the mean expected accuracy. Results (raw rows too) go to OUT/gpu_streams.json after every phase.

    python -m bench.gpu_streams --out OUT [--trees before=.before after=.] [--rates 0.25 0.5 0.75]
    python -m bench.gpu_streams --out OUT --cpu-smoke      # the tiny preset on the CPU, a few requests
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from bench import gpu_serve_engine as gse

ROOT = gse.ROOT
MODEL = "moe-budget"  # the one model the OpenAI routes serve
BUDGET_HEADER = "X-Latency-Budget-Ms"
T0 = time.time()


def phase(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.time() - T0:6.1f}s] {msg}", flush=True)


def parse_trees(items: list[str]) -> list[tuple[str, Path]]:
    trees = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--trees {item!r}: expected NAME=PATH, e.g. before=.before")
        tree = Path(path).resolve()
        if not (tree / "serving").is_dir() or not (tree / "deploy/serve_h100.yaml").is_file():
            raise SystemExit(f"--trees {item!r}: {tree} holds no serving/ and deploy/serve_h100.yaml; "
                             "give a checkout of this repo")
        trees.append((name, tree))
    return trees


def tree_commit(tree: Path) -> str | None:
    """TREE_COMMIT written beside an exported tree, else git's HEAD (absent on a copy without .git)."""
    marker = tree / "TREE_COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    r = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def tree_digest(tree: Path) -> str:
    """sha1 over the tree's Python sources (path and content): names the code that ran where a copy
    has no .git; `python -c 'from bench.gpu_streams import *; print(tree_digest(Path(".")))'` here."""
    h = hashlib.sha1()
    for pkg in ("controller", "moe", "serving", "lookupctl"):
        for f in sorted((tree / pkg).rglob("*.py")):
            h.update(str(f.relative_to(tree)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def card(device: str) -> str:
    # In a child process: this client should hold no CUDA context beside the replica's.
    if not device.startswith("cuda"):
        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name())"],
                       capture_output=True, text=True)
    return r.stdout.strip() or f"unknown ({r.stderr.strip()[-200:]})"


# ---- the table, once ------------------------------------------------------------------------------

def build_table(a: argparse.Namespace, work: Path, log: Path) -> Path:
    """Profile the grid through the graph engine, build a p99 table (gpu_serve_engine's recipe)."""
    if a.table:
        return Path(a.table).resolve()
    from controller.core_exp.synthetic import generate_sample_results

    accuracy = work / "accuracy_synthetic"
    generate_sample_results(accuracy, datasets=("text_vqa",), tiers=tuple(gse.GRID["tiers"]),
                            top_ks=tuple(int(k) for k in gse.GRID["top_k"]),
                            blocks=tuple(int(n) for n in gse.GRID["blocks"]), samples_per_config=200, seed=0)
    profile = work / "core_exp"
    shutil.rmtree(profile, ignore_errors=True)  # lookupctl profile resumes: an old run's files would stay
    gse.sh(gse.lookupctl("profile", "--backend", "torch", "--preset", a.preset, "--device", a.device,
                         "--engine", "graph", "--dataset", "text_vqa", "--tiers", *gse.GRID["tiers"],
                         "--top-k", *gse.GRID["top_k"], "--blocks", *gse.GRID["blocks"], "--samples", str(a.samples),
                         "--max_new_tokens", str(a.max_new_tokens), "--out", str(profile), "--no_progress"), log)
    table = work / "table_p99.json"
    gse.sh(gse.lookupctl("build", "--results_dir", str(accuracy), "--latency_from", str(profile), "--no_cache",
                         "--latency_quantile", "0.99", "--output_file", str(table)), log)
    return table


def base_budgets(frontier: list[float]) -> list[float]:
    """gpu_serve_engine's six budgets across the frontier (before the serving overhead is added)."""
    idx = sorted({round(i * (len(frontier) - 2) / 4) for i in range(1, 5)})
    return [frontier[0] * 1.05] + [(frontier[i] + frontier[i + 1]) / 2 for i in idx] + [frontier[-1] * 1.2]


# ---- one tree's app -------------------------------------------------------------------------------

def parse_slots(items: list[str], names: list[str]) -> dict[str, int]:
    """--slots NAME=N: a tree's decode_slots override (the same path may be given twice under two
    names, e.g. --trees one=.after two=.after --slots one=1 two=2)."""
    out = {}
    for item in items:
        name, sep, n = item.partition("=")
        if not sep or name not in names or not n.isdigit() or not 1 <= int(n) <= 4:
            raise SystemExit(f"--slots {item!r}: expected NAME=N with NAME one of {names} and N in 1..4")
        out[name] = int(n)
    return out


def write_tree_configs(tree: Path, work: Path, store: Path, a: argparse.Namespace, slots: int | None = None) -> Path:
    """gpu_serve_engine.write_configs for the graph engine, read from the tree's own YAML files (a
    tree's config models forbid fields another tree may have added); `slots` sets decode_slots."""
    serving = yaml.safe_load((tree / "configs/serving_h100.yaml").read_text())
    serving["controller"]["store"] = str(store)
    options = serving["model"]["backend_options"]
    options.pop("checkpoint", None)
    options.update(preset=a.preset, engine="graph", device=a.device)
    if slots is not None:
        options["decode_slots"] = slots
    serving["controller"]["feedback"]["auto"]["enabled"] = False  # one table for the whole run
    (work / "serving.yaml").write_text(yaml.safe_dump(serving))
    deploy = yaml.safe_load((tree / "deploy/serve_h100.yaml").read_text())
    deploy["http_options"] = {"host": "127.0.0.1", "port": a.port}
    app = deploy["applications"][0]
    app["args"] = {"config_path": str(work / "serving.yaml"), "store": str(store)}
    gpu = a.device.startswith("cuda")
    for d in app["deployments"]:
        if not gpu:  # the CPU smoke on a small machine: fractional CPUs so that everything fits
            d["ray_actor_options"] = {"num_cpus": 0.25}
        if d["name"] == "Router":
            d["num_replicas"] = 1
        if d["name"] == "LookupController":
            d["user_config"]["store"] = str(store)
            auto = (d["user_config"].get("feedback") or {}).get("auto")
            if isinstance(auto, dict):  # user_config replaces the app-level feedback settings
                auto["enabled"] = False
        if d["name"] == "MoEModel":
            d.pop("autoscaling_config", None)
            d["num_replicas"] = 1
            d["ray_actor_options"] = {"num_cpus": 4, "num_gpus": 1} if gpu else {"num_cpus": 0.25}
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(deploy))
    return path


def tree_env(tree: Path) -> dict[str, str]:
    # The tree first on the path of `serve run` and so of every Ray worker it starts.
    path = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, RAY_AUTH_MODE="disabled")
    if (tree / "serving" / "fast_path.py").exists():  # a tree that runs Serve's fast path runs it here too
        from serving.fast_path import path_env

        env |= path_env(True, own_ports=True)
    return env


def start_app(tree: Path, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    # --address local: a Ray instance of our own, never one already running on this machine.
    # SIGINT back to Python's handler: a shell that starts jobs in the background hands them SIGINT
    # ignored, and stop_app's Ctrl-C would then do nothing.
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from ray.serve.scripts import cli; sys.exit(cli())")
    cmd = [sys.executable, "-c", code, "run", "--address", "local", str(cfg)]
    with log.open("ab") as f:
        return subprocess.Popen(cmd, cwd=tree, env=tree_env(tree), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_app(proc: subprocess.Popen[bytes], gpu: bool) -> None:
    """Ctrl-C for `serve run` (it shuts Serve down, then its own Ray), then harder; on the dedicated
    GPU host `ray stop --force` as well (on a shared machine that would stop other people's Ray)."""
    for sig, wait_s in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
    if gpu:
        subprocess.run([sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())",
                        "stop", "--force"], check=False, capture_output=True)


def keep_ray_logs(dest: Path, logs: Path = Path("/tmp/ray/session_latest/logs"), per_file: int = 256 * 1024,
                  total: int = 16 * 1024 * 1024) -> int:
    """Copy the tail of this run's Ray logs (Serve's replica and proxy logs, the workers' stdout and
    stderr, where the engine's capture and the device thread's warnings go) before the app stops:
    the replica's side of a miss is read from them. Returns the bytes copied."""
    if not logs.is_dir():
        return 0
    files = sorted(logs.glob("serve/*.log")) + sorted(logs.glob("worker-*.err")) + sorted(logs.glob("worker-*.out"))
    copied = 0
    for f in files:
        try:
            st = f.lstat()  # a link or a FIFO is not a log: reading a FIFO would block the bench
            size = st.st_size
            if not stat.S_ISREG(st.st_mode) or size == 0 or copied >= total:
                continue
            with f.open("rb") as src:
                src.seek(max(0, size - per_file))
                data = src.read(per_file)
        except OSError:
            continue
        target = dest / f.relative_to(logs)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        copied += len(data)
    return copied


def wait_healthy(proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """gpu_serve_engine.wait_healthy, giving up at once when `serve run` has exited."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"`serve run` exited with {proc.returncode} before the app was healthy")
        try:
            gse.wait_healthy(min(5.0, timeout_s - (time.time() - t0)))
            return time.time() - t0
        except TimeoutError:
            continue
    raise TimeoutError(f"app not healthy after {timeout_s:.0f} s")


def publish(tree: Path, table: Path, store: Path, log: Path) -> None:
    """Each tree publishes with its own lookupctl, so that its store layout is its own."""
    with log.open("a") as f:
        cmd = [sys.executable, "-m", "lookupctl", "publish", str(table), "--store", str(store)]
        f.write(f"$ (cd {tree}) {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(cmd, check=True, cwd=tree, env=tree_env(tree), stdout=f, stderr=subprocess.STDOUT)


# ---- requests -------------------------------------------------------------------------------------

def _budget(text: str) -> float:
    """A budget on the command line: a finite number of ms in (0, 60000]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r} is not a number of ms") from None
    if not (0 < value <= 60_000):  # NaN fails this too
        raise argparse.ArgumentTypeError(f"budget {text!r} must be a number of ms in (0, 60000]")
    return value


def app_stats() -> dict[str, Any] | None:
    """The app's /v1/stats after a load step (the doors' wait estimate and its correction, the
    replica's dispatch counts), or None where the tree has no such figures or the call fails."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gse.PORT}/v1/stats", timeout=10) as r:
            body = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def prompt(i: int) -> str:
    return f"Question {i}: what is shown in the image?"


def generate_row(budget: float, i: int, max_new_tokens: int) -> dict[str, Any]:
    """POST /v1/generate on this thread's kept-alive connection (gpu_serve_engine.post)."""
    t = time.perf_counter()
    try:
        status, resp, headers = gse.post(budget, prompt(i), max_new_tokens)
    except Exception as e:  # noqa: BLE001 - a failed request is a row (a miss), not a crash
        return {"streamed": False, "budget": budget, "status": 0, "error": f"{type(e).__name__}: {e}"[:200],
                "client_ms": (time.perf_counter() - t) * 1e3, "first_token_ms": None, "feasible": None,
                "expected_accuracy": None, "config": None}
    client_ms = (time.perf_counter() - t) * 1e3
    m = gse.model_ms(resp)
    # The replica's time after its first token (decode and its pauses for later members' prefills),
    # where the tree reports it (bench/stream_load.py says why); else the decode it reported.
    out = resp.get("output") if isinstance(resp.get("output"), dict) else {}
    replica_ms, replica_first = out.get("replica_ms"), out.get("replica_first_token_ms")
    after_first = (replica_ms - replica_first if isinstance(replica_ms, (int, float)) and
                   isinstance(replica_first, (int, float)) and replica_ms >= replica_first > 0 else m.get("decode"))
    first = client_ms - after_first if status == 200 and after_first is not None else None
    return {
        "streamed": False, "budget": budget, "status": status, "client_ms": client_ms, "first_token_ms": first,
        "feasible": headers.get("x-budget-feasible"), "expected_accuracy": resp.get("expected_accuracy"),
        "config": "_".join(headers.get(h, "?") for h in ("x-knob-tier", "x-knob-top-k", "x-knob-active-blocks")),
        "decode_ms": m.get("decode"), "after_first_ms": after_first,
        "first_token_less_decode_ms": client_ms - m["decode"] if status == 200 and "decode" in m else None,
        "model_first_token_ms": (m["vision"] + m["prefill"]) if m else None,
        "bound_at": resp.get("knobs_bound_at"), "error": None if status == 200 else str(resp.get("error"))[:200],
        # What the doors assumed at admission (the modelled wait = queue_wait - its measured correction)
        # and where the replica says the time went: to tell a wait the estimate missed from one it saw.
        "queue_wait_ms": resp.get("queue_wait_ms"), "queue_wait_correction_ms": resp.get("queue_wait_correction_ms"),
        "replica_queue_wait_ms": out.get("queue_wait_ms"), "replica_first_token_ms": replica_first,
    }


def stream_row(client: Any, budget: float, i: int, max_new_tokens: int) -> dict[str, Any]:
    """A streamed /v1/completions through the openai client: the router's headers from the raw
    response, the knobs from the first chunk's `budget` object, the time of the first chunk with
    text (and of the first chunk at all)."""
    import openai

    t = time.perf_counter()
    row: dict[str, Any] = {"streamed": True, "budget": budget, "status": 0, "first_token_ms": None,
                           "first_chunk_ms": None, "feasible": None, "expected_accuracy": None, "config": None,
                           "chunks": 0, "error": None}
    try:
        with client.completions.with_streaming_response.create(
            model=MODEL, prompt=prompt(i), max_tokens=max_new_tokens, stream=True,
            extra_headers={BUDGET_HEADER: f"{budget:g}"},
        ) as raw:
            row["status"], row["feasible"] = raw.status_code, raw.headers.get("x-budget-feasible")
            row["header_config"] = "_".join(raw.headers.get(h, "?") for h in
                                            ("x-knob-tier", "x-knob-top-k", "x-knob-active-blocks"))
            for chunk in raw.parse():
                now = (time.perf_counter() - t) * 1e3
                row["chunks"] += 1
                if row["first_chunk_ms"] is None:
                    row["first_chunk_ms"] = now
                    extra = (chunk.model_extra or {}).get("budget")
                    if isinstance(extra, dict):
                        knobs = extra.get("knobs") or {}
                        row["expected_accuracy"] = extra.get("expected_accuracy")
                        row["body_feasible"] = extra.get("feasible")
                        row["bound_at"] = extra.get("knobs_bound_at")
                        row["config"] = f"{knobs.get('tier')}_{knobs.get('top_k')}_{knobs.get('num_active_blocks')}"
                if row["first_token_ms"] is None and any(c.text for c in chunk.choices):
                    row["first_token_ms"] = now
                timings = (chunk.model_extra or {}).get("timings")
                if isinstance(timings, dict):  # the finish chunk: the replica's side (trees since 2026-12-07)
                    row["replica_queue_wait_ms"] = timings.get("queue_wait_ms")
                    row["replica_first_token_ms"] = timings.get("replica_first_token_ms")
                    row["model_first_token_ms"] = timings.get("first_token_ms")
                    # The router's first chunk handed to the server (trees since b39c4a1): the
                    # client's first token less this is HAProxy and the client's own time.
                    row["router_first_token_ms"] = timings.get("router_first_token_ms")
    except openai.APIStatusError as e:
        row["status"], row["error"] = e.status_code, str(e)[:200]
        row["feasible"] = e.response.headers.get("x-budget-feasible")
    except Exception as e:  # noqa: BLE001 - an error event or a dropped connection: a failed row
        row["status"], row["error"] = 0, f"{type(e).__name__}: {e}"[:200]
    row["client_ms"] = (time.perf_counter() - t) * 1e3
    if row["config"] is None:
        row["config"] = row.get("header_config")
    if row["first_token_ms"] is None and row["chunks"] and row["error"] is None:
        row["no_text"] = True  # every chunk was empty: the first chunk stands for the first token
        row["first_token_ms"] = row["first_chunk_ms"]
    return row


def one(client: Any, streamed: bool, budget: float, i: int, max_new_tokens: int) -> dict[str, Any]:
    row = stream_row(client, budget, i, max_new_tokens) if streamed else generate_row(budget, i, max_new_tokens)
    ft = row["first_token_ms"]
    row["met"] = bool(row["status"] == 200 and row["error"] is None and ft is not None and ft <= budget)
    return row


def closed_loop(client: Any, budgets: list[float], clients: int, warm_s: float, window_s: float,
                max_new_tokens: int) -> tuple[float, list[dict[str, Any]]]:
    """`clients` clients, each alternating streamed and not over the budgets; completions per
    second in the window after warm_s."""
    stop, rows, lock = threading.Event(), [], threading.Lock()
    t0 = time.perf_counter()

    def worker(w: int) -> None:
        i = w
        while not stop.is_set():
            row = one(client, i % 2 == 0, budgets[(i // 2) % len(budgets)], i, max_new_tokens)
            row["done_s"] = time.perf_counter() - t0
            with lock:
                rows.append(row)
            i += clients

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(clients)]
    for t in threads:
        t.start()
    time.sleep(warm_s + window_s)
    stop.set()
    for t in threads:
        t.join(120)
    done = [r for r in rows if r["status"] == 200 and warm_s <= r["done_s"] < warm_s + window_s]
    return len(done) / window_s, rows


def open_loop(client: Any, budgets: list[float], rate_rps: float, n: int, seed: int,
              max_new_tokens: int) -> list[dict[str, Any]]:
    """n Poisson arrivals at rate_rps, drawn up front; half streamed, each half over every budget
    equally often; each fired at its time whatever the earlier ones did."""
    rng = random.Random(seed)
    jobs = [(True, budgets[i % len(budgets)]) for i in range(n // 2)]
    jobs += [(False, budgets[i % len(budgets)]) for i in range(n - n // 2)]
    rng.shuffle(jobs)
    at, plan = 0.0, []
    for streamed, budget in jobs:
        at += rng.expovariate(rate_rps)
        plan.append((at, streamed, budget))

    def fire(k: int, at_s: float, streamed: bool, budget: float, t0: float) -> dict[str, Any]:
        late = (time.perf_counter() - t0 - at_s) * 1e3
        row = one(client, streamed, budget, k, max_new_tokens)
        row.update(at_s=round(at_s, 4), late_ms=round(late, 2))
        return row

    with ThreadPoolExecutor(max_workers=256) as pool:
        t0, futures = time.perf_counter(), []
        for k, (at_s, streamed, budget) in enumerate(plan):
            delay = t0 + at_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(fire, k, at_s, streamed, budget, t0))
        return [f.result() for f in futures]


# ---- summaries ------------------------------------------------------------------------------------

def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def part(rs: list[dict[str, Any]]) -> dict[str, Any]:
        feas = [r for r in rs if r["feasible"] == "true"]
        acc = [r["expected_accuracy"] for r in rs if isinstance(r.get("expected_accuracy"), (int, float))]
        ft = [r["first_token_ms"] for r in rs if r["first_token_ms"] is not None]
        return {
            "n": len(rs), "ok": sum(r["status"] == 200 and r["error"] is None for r in rs),
            "feasible_share": len(feas) / len(rs) if rs else None,
            "attainment_feasible": sum(r["met"] for r in feas) / len(feas) if feas else None,
            "feasible_missed": sum(not r["met"] for r in feas),
            "attainment_all": sum(r["met"] for r in rs) / len(rs) if rs else None,
            "mean_expected_accuracy": statistics.fmean(acc) if acc else None,
            "first_token_p50_ms": gse.pct(ft, 50) if ft else None,
            "first_token_p99_ms": gse.pct(ft, 99) if ft else None,
            "late_fire_p99_ms": gse.pct([r["late_ms"] for r in rs], 99) if rs and "late_ms" in rs[0] else None,
            "errors": sorted({str(r["error"]) for r in rs if r["error"]})[:3],
            "configs": dict(Counter(str(r.get("config")) for r in rs)),
            "bound_at_replica": sum(r.get("bound_at") == "replica" for r in rs),
        }

    return {"streamed": part([r for r in rows if r["streamed"]]),
            "generate": part([r for r in rows if not r["streamed"]]), "all": part(rows)}


def fmt(x: Any, pct_: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct_ else f"{x:.3f}" if isinstance(x, float) else str(x)


def print_table(result: dict[str, Any]) -> None:
    print("\n| tree | load | rate rps | kind | n | feasible | attainment (feasible) | missed | mean exp. acc. "
          "| first token p50 / p99 ms |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tree, res in result["trees"].items():
        for label, r in (res.get("rates") or {}).items():
            if "summary" not in r:
                print(f"| {tree} | {label} | {r['rate_rps']:.2f} | {r.get('skipped')} |")
                continue
            for kind in ("streamed", "generate"):
                s = r["summary"][kind]
                print(f"| {tree} | {label} | {r['rate_rps']:.2f} | {kind} | {s['n']} "
                      f"| {fmt(s['feasible_share'], True)} | **{fmt(s['attainment_feasible'], True)}** "
                      f"| {s['feasible_missed']} "
                      f"| {fmt(s['mean_expected_accuracy'])} "
                      f"| {fmt(s['first_token_p50_ms'])} / {fmt(s['first_token_p99_ms'])} |", flush=True)
    print(flush=True)


# ---- one tree -------------------------------------------------------------------------------------

def run_tree(name: str, tree: Path, a: argparse.Namespace, table: Path, result: dict[str, Any],
             save: Any, deadline: float) -> None:
    res: dict[str, Any] = {"path": str(tree), "commit": tree_commit(tree), "digest": tree_digest(tree), "rates": {}}
    result["trees"][name] = res
    work = Path(a.work) / name
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    log = Path(a.out) / "gpu_streams_build.log"
    publish(tree, table, store, log)
    slots = a.slots_by_tree.get(name)
    res["decode_slots"] = slots
    cfg = write_tree_configs(tree, work, store, a, slots)
    gpu = a.device.startswith("cuda")
    phase(f"[{name}] start the app from {tree} (commit {res['commit']}, sources {res['digest']})")
    t = time.time()
    proc = start_app(tree, cfg, Path(a.out) / f"serve_run_{name}.log")
    from openai import OpenAI

    # No retries: a failed request must show as one (the client's pool allows 1,000 connections).
    client = OpenAI(base_url=f"http://127.0.0.1:{a.port}/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        res["startup_s"] = round(wait_healthy(proc, min(a.startup_timeout_s, deadline - time.time() - 60)), 1)
        phase(f"[{name}] healthy after {res['startup_s']} s (since start {time.time() - t:.1f} s)")
        # Every round sends each budget once as /v1/generate and once streamed; the first round is a
        # cold start (first calls through every handle), not overhead.
        base = result["base_budgets_ms"]
        jobs = [(streamed, b) for _ in range(a.soak) for b in base for streamed in (False, True)]
        soak = [one(client, streamed, b, i, a.max_new_tokens) for i, (streamed, b) in enumerate(jobs)]
        res["soak_rows"] = soak
        if result.get("budgets") is None:  # from the first tree's soak, kept for every tree
            gen = [r for r in soak[2 * len(base):] if not r["streamed"] and r["status"] == 200
                   and r.get("model_first_token_ms") is not None]
            gaps = [r["first_token_ms"] - r["model_first_token_ms"] for r in gen]
            overhead = gse.pct(gaps, 95) if gaps else 0.0
            per = statistics.median(r["client_ms"] for r in soak if r["status"] == 200) if soak else 0.0
            result["soak"] = {"overhead_p50_ms": statistics.median(gaps) if gaps else None, "overhead_p95_ms": overhead,
                              "median_request_ms": per, "room_requests": a.room, "tree": name}
            result["budgets"] = sorted({round(b + overhead + a.room * per, 1) for b in base})
        budgets = result["budgets"]
        phase(f"[{name}] soak done ({len(soak)} requests); budgets {budgets} ms; "
              f"soak {result.get('soak', 'not used: --budgets')}")
        save()
        if a.capacity_rps:
            res["capacity_rps"], res["capacity_rows"] = a.capacity_rps, []
        else:
            cap, rows = closed_loop(client, budgets, a.capacity_clients, a.capacity_warm_s, a.capacity_s,
                                    a.max_new_tokens)
            res["capacity_rps"], res["capacity_rows"] = round(cap, 2), rows
            res["capacity_summary"] = summarise(rows)
        phase(f"[{name}] capacity {res['capacity_rps']} req/s ({a.capacity_clients} closed-loop clients)")
        save()
        base_rps = res["capacity_rps"]
        if a.rates_of == "first" and result.get("first_capacity_rps"):
            base_rps = result["first_capacity_rps"]
        if not base_rps or base_rps <= 0:
            raise RuntimeError(f"capacity {base_rps} req/s: no request completed in the closed loop")
        result.setdefault("first_capacity_rps", res["capacity_rps"])
        for k, frac in enumerate(a.rates):
            rate = frac * base_rps
            left = deadline - time.time() - a.stop_reserve_s
            n = min(a.requests, int(rate * a.max_rate_s))
            rates_left = len(a.rates) - k
            if n / rate > left / rates_left:  # keep inside the tree's time: fewer requests, same rate
                n = int(rate * max(0.0, left / rates_left - 3))
            label = f"{round(100 * frac)}%"
            if n < 4:
                phase(f"[{name}] {label}: no time left ({left:.0f} s), skipped")
                res["rates"][label] = {"rate_rps": rate, "skipped": "no time left"}
                continue
            phase(f"[{name}] {label} of {base_rps:.2f} = {rate:.2f} req/s, {n} requests (~{n / rate:.0f} s)")
            rows = open_loop(client, budgets, rate, n, a.seed + k, a.max_new_tokens)
            res["rates"][label] = {"rate_rps": rate, "fraction": frac, "requests": n,
                                   "summary": summarise(rows), "rows": rows, "stats": app_stats()}
            for kind in ("streamed", "generate"):
                s = res["rates"][label]["summary"][kind]
                phase(f"[{name}] {label} {kind}: n {s['n']}, feasible {fmt(s['feasible_share'], True)}, attainment "
                      f"(feasible) {fmt(s['attainment_feasible'], True)} ({s['feasible_missed']} missed), accuracy "
                      f"{fmt(s['mean_expected_accuracy'])}, first token p50/p99 {fmt(s['first_token_p50_ms'])}/"
                      f"{fmt(s['first_token_p99_ms'])} ms, errors {s['errors']}")
            save()
        if gpu:  # on the dedicated host only: elsewhere session_latest may be someone else's Ray
            res["ray_logs_bytes"] = keep_ray_logs(Path(a.out) / f"ray_logs_{name}")
    except Exception as e:  # noqa: BLE001 - keep what this tree measured; the next tree still runs
        res["error"] = f"{type(e).__name__}: {e}"
        phase(f"[{name}] failed: {res['error']}")
    finally:
        client.close()
        t = time.time()
        stop_app(proc, gpu)
        res["stop_s"] = round(time.time() - t, 1)
        phase(f"[{name}] app stopped ({res['stop_s']} s)")
        save()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--trees", nargs="+", default=["after=."], metavar="NAME=PATH")
    p.add_argument("--slots", nargs="*", default=[], metavar="NAME=N",
                   help="a tree's decode_slots (moe.engine), overriding its configs/serving_h100.yaml")
    p.add_argument("--rates", nargs="+", type=float, default=[0.25, 0.5, 0.75], help="fractions of the capacity")
    p.add_argument("--rates_of", choices=["own", "first"], default="own",
                   help="each tree's own capacity, or the first tree's for every tree (equal absolute load)")
    p.add_argument("--requests", type=int, default=200, help="per rate, half of them streamed")
    p.add_argument("--max_rate_s", type=float, default=40.0, help="fewer requests where a rate would take longer")
    p.add_argument("--capacity_clients", type=int, default=16)
    p.add_argument("--capacity_s", type=float, default=12.0)
    p.add_argument("--capacity_warm_s", type=float, default=2.0)
    p.add_argument("--capacity_rps", type=float, default=None, help="skip the closed loop: use this capacity")
    p.add_argument("--budgets", type=_budget, nargs="+", default=None,
                   help="these budgets (ms) instead of the first tree's soak: a run of one tree then compares "
                        "with an earlier run of two (its JSON's `budgets`)")
    p.add_argument("--room", type=float, default=1.0,
                   help="budgets get this many median requests on top, for the queue an open loop meets")
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--max_new_tokens", type=int, default=8)
    p.add_argument("--soak", type=int, default=3, help="rounds over the six budgets, before measuring")
    p.add_argument("--preset", default="olmoe-1b-7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--table", default=None, help="a built table to serve instead of profiling")
    p.add_argument("--port", type=int, default=gse.PORT)
    p.add_argument("--work", default="/tmp/gpu_streams")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline_s", type=float, default=520.0, help="from this script's start, for all trees")
    p.add_argument("--tree_s", type=float, default=240.0, help="at most per tree")
    p.add_argument("--startup_timeout_s", type=float, default=150.0)
    p.add_argument("--stop_reserve_s", type=float, default=25.0)
    p.add_argument("--cpu-smoke", dest="cpu_smoke", action="store_true",
                   help="the tiny preset on the CPU, a 2x2x2 grid, a few requests (proves the script end to end)")
    a = p.parse_args(argv)
    if a.cpu_smoke:
        a.device, a.preset, a.samples, a.max_new_tokens = "cpu", "tiny", 2, 4
        a.requests, a.capacity_clients, a.capacity_s, a.soak = min(a.requests, 12), 4, 6.0, 2
        if a.port == gse.PORT:  # a shared machine: keep off the port other people's apps use
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                a.port = s.getsockname()[1]
        gse.GRID.update(tiers=["low", "medium"], top_k=["4", "8"], blocks=["12", "16"])
    gse.PORT = a.port  # gse.post and gse.wait_healthy read it at each call
    sys.setswitchinterval(0.001)  # many client threads: a reply's thread should not wait 5 ms for the GIL
    trees = parse_trees(a.trees)
    # refused before any device time is spent
    a.slots_by_tree = parse_slots(a.slots, [name for name, _ in trees])
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "card": card(a.device),
                              "args": vars(a), "grid": gse.GRID, "budgets": sorted(a.budgets) if a.budgets else None,
                              "trees": {}}
    lock = threading.Lock()

    def save() -> None:
        with lock:
            result["elapsed_s"] = round(time.time() - T0, 1)
            tmp = out / "gpu_streams.json.tmp"
            tmp.write_text(json.dumps(result, indent=1, default=str))
            tmp.replace(out / "gpu_streams.json")

    versions = {}
    for pkg in ("ray", "openai", "httpx2", "httpcore2", "anyio", "typing_extensions", "pydantic", "torch",
                "transformers"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - absent: say so
            versions[pkg] = None
    result["versions"] = versions
    phase(f"card {result['card']}; trees {[(n, str(t)) for n, t in trees]}; versions {versions}")
    save()
    t = time.time()
    phase("profile + p99 table" if not a.table else f"table {a.table}")
    try:
        table = build_table(a, work, out / "gpu_streams_build.log")
    except subprocess.CalledProcessError as e:
        result["error"] = f"table: {e}"
        save()
        phase(f"table failed: {e}; see gpu_streams_build.log")
        return 1
    from controller import load_table

    frontier = [c.latency_ms for c in load_table(table).frontier()]
    result.update(table=str(table), table_s=round(time.time() - t, 1), frontier_ms=[round(x, 2) for x in frontier],
                  base_budgets_ms=[round(b, 2) for b in base_budgets(frontier)])
    phase(f"table in {result['table_s']} s; frontier {result['frontier_ms']}")
    save()
    for k, (name, tree) in enumerate(trees):
        left = T0 + a.deadline_s - time.time()
        deadline = time.time() + min(a.tree_s, left / (len(trees) - k))
        run_tree(name, tree, a, table, result, save, deadline)
    print_table(result)
    save()
    phase(f"done; {out / 'gpu_streams.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
