"""`lookupctl export`: write a table file in another layout (the reference implementation's)."""

from __future__ import annotations

import argparse

from controller.reference_api import save_reference_format
from controller.table import GLOBAL_SCOPE, Table
from lookupctl import add_flag


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help="write a table in another format (reference: its load() reads it)")
    add_flag(p, "table", required=True, help="table JSON (this project's or the reference format)")
    add_flag(p, "format", choices=("reference", "native"), default="reference",
             help="reference: the reference implementation's layout (global scope only); native: this project's")
    add_flag(p, "output_file", required=True, help="where to write the exported file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = Table.load(args.table)
    if args.format == "reference":
        out = save_reference_format(table, args.output_file)
        dropped = [s for s in table.scopes if s != GLOBAL_SCOPE]
        note = f" (per-dataset scopes not exported: {', '.join(dropped)})" if dropped else ""
        print(f"exported {table.version_id} in the reference format -> {out}{note}")
    else:
        out = table.save(args.output_file)
        print(f"exported {table.version_id} in this project's format -> {out}")
    return 0
