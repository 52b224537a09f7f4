"""`lookupctl build`: profiling results -> table file (the seed's flags, dashed twins too)."""

from __future__ import annotations

import argparse
import sys

from controller.build import build_table_from_results
from controller.params import make_build_params
from controller.report import table_summary_lines
from lookupctl import add_flag


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("build", help="build a lookup table from core_exp results")
    add_flag(p, "results_dir", required=True, help="core_exp results folder (dataset folders inside)")
    add_flag(p, "output_file", required=True, help="table JSON to write")
    add_flag(p, "aggregation_method", default="mean", choices=["mean", "median", "max_accuracy"])
    add_flag(p, "tolerance", type=float, default=0.05, help="default budget slack in [0, 1]")
    add_flag(p, "datasets", nargs="+", default=None, help="dataset names (coco_2014_vqa or coco-2014-vqa)")
    add_flag(p, "use_total_latency", action="store_true", help="compare T_total with budgets, not prefill")
    add_flag(p, "use_prefill_only", action="store_true", help="the default (accepted for the seed's scripts)")
    add_flag(p, "latency_quantile", type=float, default=None,
             help="compare this latency quantile (e.g. 0.95) with budgets instead of the aggregate")
    add_flag(p, "min_samples", type=int, default=1, help="leave out configs with fewer samples")
    add_flag(p, "latency_from", default=None,
             help="take latency from this (newer) results folder, accuracy from --results_dir")
    add_flag(p, "strict", action="store_true", help="fail on any skipped file or dropped sample")
    add_flag(p, "cache_dir", default=None, help="incremental parse cache (default ~/.cache/lookupctl)")
    add_flag(p, "no_cache", action="store_true", help="parse every file, read and write no cache")
    add_flag(p, "quiet", action="store_true", help="print only the output path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = make_build_params(
        aggregation_method=args.aggregation_method,
        tolerance=args.tolerance,
        latency_metric="total" if args.use_total_latency else "prefill",
        latency_quantile=args.latency_quantile,
        min_samples=args.min_samples,
    )
    result = build_table_from_results(
        args.results_dir, params, datasets=args.datasets, strict=args.strict, cache_dir=args.cache_dir,
        use_cache=not args.no_cache, progress=None if not args.quiet else False, latency_from=args.latency_from,
    )
    path = result.table.save(args.output_file)
    if args.quiet:
        print(path)
        return 0
    lines = result.load_report.summary_lines()
    if result.latency_load_report is not None:
        lines += ["latency profile (--latency_from):", *("  " + s for s in result.latency_load_report.summary_lines())]
    lines += table_summary_lines(result.table)
    # The id publish keeps, unless the store already holds a newer version (publish then names both).
    lines.append(f"wrote {path} (version {result.table.version_id}; `lookupctl publish` keeps this id "
                 "unless the store holds a newer version, and then prints the id to use)")
    print("\n".join(lines), file=sys.stdout)
    return 0
