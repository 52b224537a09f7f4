"""`lookupctl evaluate`: build a table on a build split, score it on held-out samples."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from controller.core_exp.load import load_samples
from controller.evaluate import Strategy, budget_range, evaluate, parse_strategies, strategy_name
from controller.evaluate.report import text_lines, to_json
from controller.params import make_build_params
from lookupctl import add_flag


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("evaluate", help="score a table on held-out samples: attainment, accuracy, regret")
    add_flag(p, "results_dir", required=True, help="core_exp results folder (dataset folders inside)")
    add_flag(p, "datasets", nargs="+", default=None, help="dataset names (coco_2014_vqa or coco-2014-vqa)")
    add_flag(p, "test_fraction", type=float, default=0.3, help="share of questions held out, in (0, 1)")
    add_flag(p, "seed", type=int, default=0, help="seed of the split")
    budgets = p.add_mutually_exclusive_group()
    add_flag(budgets, "budgets", nargs="+", type=float, default=None, help="budgets in ms")
    add_flag(budgets, "budget_range", nargs=3, type=float, default=None,
             metavar=("START", "STOP", "STEP"), help="budgets START..STOP (inclusive) every STEP ms")
    add_flag(p, "aggregation_method", default="mean", choices=["mean", "median", "max_accuracy"])
    add_flag(p, "tolerance", type=float, default=0.05, help="budget slack in [0, 1] for the rule")
    add_flag(p, "use_total_latency", action="store_true", help="T_total instead of prefill latency")
    add_flag(p, "latency_quantile", type=float, default=None,
             help="compare this latency quantile with budgets")
    add_flag(p, "min_samples", type=int, default=1, help="leave out configs with fewer build samples")
    add_flag(p, "per_dataset", action="store_true", help="also score each dataset's own scope")
    add_flag(p, "compare", default=None, help="strategies side by side, e.g. mean,p90,p95")
    add_flag(p, "json", default=None, metavar="OUT", help="write the full result as JSON")
    add_flag(p, "plot", default=None, metavar="OUT.png", help="accuracy and violation rate against budget")
    add_flag(p, "summary_only", action="store_true", help="print averages only, no per-budget rows")
    add_flag(p, "strict", action="store_true", help="fail on any skipped file or dropped sample")
    add_flag(p, "cache_dir", default=None, help="incremental parse cache (default ~/.cache/lookupctl)")
    add_flag(p, "no_cache", action="store_true", help="parse every file, read and write no cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = make_build_params(
        aggregation_method=args.aggregation_method, tolerance=args.tolerance,
        latency_metric="total" if args.use_total_latency else "prefill",
        latency_quantile=args.latency_quantile, min_samples=args.min_samples,
    )
    strategies = (parse_strategies(args.compare, params) if args.compare
                  else (Strategy(strategy_name(params), params),))
    budgets = budget_range(*args.budget_range) if args.budget_range else args.budgets
    loaded = load_samples(args.results_dir, datasets=args.datasets, strict=args.strict,
                          cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=False)
    result = evaluate(loaded.samples, strategies, test_fraction=args.test_fraction, seed=args.seed,
                      budgets=budgets, per_dataset=args.per_dataset)
    lines = text_lines(result, details=not args.summary_only)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(to_json(result), indent=1) + "\n")
        lines.append(f"wrote {out}")
    if args.plot:
        from controller.evaluate.plot import plot_evaluation

        lines.append(f"wrote {plot_evaluation(result, args.plot)}")
    print("\n".join(lines), file=sys.stdout)
    return 0
