"""Run every benchmark under bench/ and write docs/BENCHMARKS.latest.md (what `make bench` calls).

    python -m bench.run_all [--quick] [--only bench_library bench_build] [--out docs/BENCHMARKS.latest.md]

Each benchmark runs in its own interpreter (its imports, memory and a crash stay its own) under a
time limit; a missing, failing or slow one is reported in the doc and never stops the run. The whole
run is held to TOTAL_BUDGET_S so that `make bench` finishes in under 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.report import Outcome, render

BENCHMARKS: tuple[str, ...] = (
    "bench.bench_library",
    "bench.bench_build",
    "bench.bench_serving_overhead",
    "bench.bench_overhead_paths",
    "bench.bench_reload",
    "bench.bench_knob_overhead",
    "bench.bench_evaluate",
    "bench.bench_hostile",
    "bench.bench_attainment",
    "bench.bench_streams",
    "bench.bench_pair_switch",
)
TOTAL_BUDGET_S = 540.0  # leaves a minute of the 10 for installs and start-up
PER_BENCH_S = {False: 240.0, True: 120.0}  # by --quick
# bench_attainment runs five apps through four loads each and a live-recalibration warm-up: ~240 s
# on a 2-core machine; the others take ~220 s together, so the total still fits.
# bench_streams (issue 17): setup, three mixed loads and the long-stream pair on two tables, ~420 s here; last, so
# on a 2-core machine the total budget is often spent before it (`--only bench_streams` runs it alone).
# bench_overhead_paths: three Ray instances a round, two rounds: ~420 s here.
# bench_pair_switch: three apps through three loads, ~330 s here (120 requests a point; --quick 40).
LONGER_S = {"bench.bench_attainment": 320.0, "bench.bench_streams": 480.0, "bench.bench_overhead_paths": 480.0,
            "bench.bench_pair_switch": 420.0}
ROOT = Path(__file__).resolve().parent.parent

EXIT_MISSING, EXIT_NO_RUN = 3, 4


# Its own file, rewritten whole each run: docs/BENCHMARKS.md is the record of named runs (GPU runs
# among them) that no tool rewrites, so that `make bench` can never erase one.
DEFAULT_OUT = ROOT / "docs" / "BENCHMARKS.latest.md"


def _child(module: str, quick: bool, result_path: str) -> int:
    """Inside the benchmark's own interpreter: import, run, write the dict as JSON."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return EXIT_MISSING
        raise
    run = getattr(mod, "run", None)
    if not callable(run):
        return EXIT_NO_RUN
    result = run(quick)
    Path(result_path).write_text(json.dumps(result, default=str))
    return 0


def run_one(module: str, quick: bool, timeout_s: float) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.run_all", "--child", module, "--result", str(out)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd + (["--quick"] if quick else []), cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return Outcome(module, f"timed out after {timeout_s:.0f} s", time.perf_counter() - t0)
        elapsed = time.perf_counter() - t0
        if proc.returncode == EXIT_MISSING:
            return Outcome(module, "missing (module not written yet)", elapsed)
        if proc.returncode == EXIT_NO_RUN:
            return Outcome(module, "no run(quick) -> dict function", elapsed)
        if proc.returncode != 0 or not out.exists():
            return Outcome(module, f"failed (exit {proc.returncode})", elapsed, detail=proc.stderr or proc.stdout)
        result = json.loads(out.read_text())
    if not isinstance(result, dict):
        return Outcome(module, "failed (run() did not return a dict)", elapsed, detail=repr(result)[:500])
    return Outcome(module, "ok", elapsed, result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller inputs and fewer rounds in every benchmark")
    p.add_argument("--only", nargs="+", default=None, help="benchmark module names (bench_library or bench.x)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return _child(a.child, a.quick, a.result)

    modules = list(BENCHMARKS)
    if a.only:
        wanted = {n if n.startswith("bench.") else f"bench.{n}" for n in a.only}
        modules = [m for m in modules if m in wanted] + sorted(wanted - set(modules))
    start = time.perf_counter()
    outcomes: list[Outcome] = []
    for module in modules:
        left = TOTAL_BUDGET_S - (time.perf_counter() - start)
        if left < 10:
            outcomes.append(Outcome(module, "skipped (total time budget spent)", 0.0))
            print(f"{module:<34} skipped: total time budget spent", flush=True)
            continue
        print(f"{module:<34} ...", end=" ", flush=True)
        limit = PER_BENCH_S[a.quick] if a.quick else LONGER_S.get(module, PER_BENCH_S[a.quick])
        o = run_one(module, a.quick, min(limit, left))
        ok, judged = o.passed_count()
        goals = f", goals met {ok}/{judged}" if judged else ""
        print(f"{o.status} in {o.elapsed_s:.1f} s{goals}", flush=True)
        outcomes.append(o)
    total = time.perf_counter() - start
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(outcomes, generated_at=generated, quick=a.quick, total_s=total) + "\n")
    print(f"wrote {out} ({total:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
