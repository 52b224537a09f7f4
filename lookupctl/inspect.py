"""`lookupctl inspect`: statistics and frontier of a table, optionally a frontier plot."""

from __future__ import annotations

import argparse
import json

from controller.datasets import check_dataset
from controller.report import config_rows, table_summary_lines
from controller.table import Table
from lookupctl import add_flag


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("inspect", help="show a table's statistics and frontier")
    add_flag(p, "table", required=True)
    add_flag(p, "dataset", default=None, help="scope to show (default: global)")
    add_flag(p, "all_configs", action="store_true", help="list every config, not only the frontier")
    add_flag(p, "plot", default=None, metavar="PNG", help="write accuracy vs latency with the frontier")
    add_flag(p, "json", action="store_true", help="print the table summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = Table.load(args.table)
    check_dataset(table, args.dataset)
    scope = table.scope(args.dataset)
    if args.json:
        print(json.dumps(table.summary(), indent=1))
    else:
        print("\n".join(table_summary_lines(table)))
        print(f"\nfrontier of scope '{scope.name}' ({len(scope.frontier)} of {len(scope.configs)} configs):")
        print("\n".join(config_rows(list(scope.frontier.entries))))
        if args.all_configs:
            print(f"\nall configs of scope '{scope.name}':")
            print("\n".join(config_rows(list(scope.configs))))
    if args.plot:
        from controller.plot import plot_frontier

        print(f"wrote {plot_frontier(table, args.plot, scope.name)}")
    return 0
