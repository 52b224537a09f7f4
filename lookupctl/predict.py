"""`lookupctl predict`: resolve budgets against a table file."""

from __future__ import annotations

import argparse
import json
import math

from controller.datasets import check_dataset
from controller.errors import BudgetError
from controller.table import Table
from lookupctl import add_flag


def _budget(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BudgetError(text, "is not a number") from None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("predict", help="resolve latency budgets (ms) to knobs")
    add_flag(p, "table", required=True, help="table JSON (this project's or the reference format)")
    p.add_argument("--budgets", "--test_budgets", "--test-budgets", dest="budgets", nargs="+", required=True,
                   metavar="MS", help="latency budgets in milliseconds")
    add_flag(p, "dataset", default=None, help="per-dataset scope (an unknown name is an error)")
    add_flag(p, "tolerance", type=float, default=None, help="override the table's tolerance, in [0, 1]")
    add_flag(p, "json", action="store_true", help="one JSON object per budget")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = Table.load(args.table)
    check_dataset(table, args.dataset)  # an unknown name is an error, not a silent global answer
    budgets = [_budget(b) for b in args.budgets]
    decisions = [table.resolve(b, tolerance=args.tolerance, dataset=args.dataset) for b in budgets]
    if args.json:
        for d in decisions:
            print(json.dumps(d.to_dict()))
        return 0
    print(f"table {table.version_id}  scope {decisions[0].scope}  tolerance {decisions[0].tolerance:g}")
    print(f"{'budget_ms':>10}  {'tier':<7}{'top_k':>6}{'blocks':>7}{'accuracy':>10}{'latency_ms':>12}  feasible")
    for d in decisions:
        flag = "yes" if d.feasible else "NO (fastest config)"
        print(f"{d.budget_ms:>10g}  {d.tier:<7}{d.top_k:>6}{d.num_active_blocks:>7}{d.expected_accuracy:>10.4f}"
              f"{d.expected_latency_ms:>12.2f}  {flag}")
    assert all(math.isfinite(d.expected_accuracy) for d in decisions)
    return 0
