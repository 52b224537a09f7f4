"""Benchmark: one `evaluate` run (mean vs p95 budgets) on SYNTHETIC results, and its headline numbers.

Run as `python -m bench.bench_evaluate [--quick]`. Quick: the bundled sample_results (40 samples per
config); full: 300 samples per config generated in a temp folder. Goals: an evaluation of two
strategies costs at most 5x a plain load + build of the same data, and p95 budgets attain more often
than mean budgets.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import cli_main
from controller.build import build_table
from controller.core_exp.load import load_samples
from controller.evaluate import budget_range, evaluate, parse_strategies
from controller.params import BuildParams

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "sample_results" / "core_exp_synthetic"
GOAL_COST_RATIO = 5.0


def _measure(results: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    samples = load_samples(results, use_cache=False, progress=False).samples
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_table(samples, BuildParams())
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate(samples, parse_strategies("mean,p95", BuildParams()), test_fraction=0.3, seed=0,
                      budgets=budget_range(100, 200, 10))
    t_eval = time.perf_counter() - t0
    return {"samples": len(samples), "load_s": t_load, "build_s": t_build, "evaluate_s": t_eval,
            "mean": result.strategy("mean").scope().averages, "p95": result.strategy("p95").scope().averages}


def run(quick: bool) -> dict[str, Any]:
    if quick:
        m = _measure(BUNDLED)
        data = "bundled sample_results/core_exp_synthetic (40 samples per config)"
    else:
        from controller.core_exp.synthetic import generate_sample_results

        with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
            generate_sample_results(tmp, extended_grid=True, samples_per_config=300, seed=0, max_decode_steps=2)
            m = _measure(Path(tmp))
        data = "generated, 300 samples per config"
    plain = m["load_s"] + m["build_s"]
    total = m["load_s"] + m["evaluate_s"]
    mean, p95 = m["mean"], m["p95"]
    return {
        "title": "Held-out evaluation (lookupctl evaluate): cost and headline numbers",
        "figures": [
            {"name": "load + evaluate (mean, p95; 11 budgets)", "value": round(total, 3), "unit": "s",
             "baseline": round(plain, 3), "baseline_name": "load + one build_table, same data",
             "goal": f"<= {GOAL_COST_RATIO:g}x baseline", "passed": total <= GOAL_COST_RATIO * plain},
            {"name": "SLO attainment, p95 budgets", "value": round(p95.attainment, 3), "unit": "",
             "baseline": round(mean.attainment, 3), "baseline_name": "mean budgets",
             "goal": ">= mean budgets", "passed": p95.attainment >= mean.attainment},
            {"name": "test accuracy, p95 budgets", "value": round(p95.accuracy, 3), "unit": "",
             "baseline": round(mean.accuracy, 3), "baseline_name": "mean budgets", "goal": "", "passed": None},
            {"name": "effective accuracy (late = wrong), p95", "value": round(p95.effective_accuracy, 3),
             "unit": "", "baseline": round(mean.effective_accuracy, 3), "baseline_name": "mean budgets",
             "goal": "", "passed": None},
            {"name": "regret vs test oracle, p95", "value": round(p95.regret, 4), "unit": "",
             "baseline": round(mean.regret, 4), "baseline_name": "mean budgets", "goal": "", "passed": None},
        ],
        "notes": [f"SYNTHETIC data: {data}, {m['samples']} samples; test fraction 0.3, seed 0; "
                  "budgets 100-200 ms every 10; averages over budgets, global scope. Not measurements."],
    }


def main() -> None:
    cli_main(run, __doc__)


if __name__ == "__main__":
    main()
