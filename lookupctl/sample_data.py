"""`lookupctl sample-data`: write a SYNTHETIC core_exp results folder for demos and tests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from controller.core_exp.synthetic import generate_sample_results
from controller.errors import ControllerError
from lookupctl import add_flag


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sample-data",
        help="write SYNTHETIC core_exp profiling results (not measurements)",
        description="Write SYNTHETIC core_exp profiling results in the real on-disk format.",
    )
    add_flag(parser, "out", required=True, help="folder to write (the results_dir)")
    add_flag(parser, "datasets", nargs="+", default=["coco_2014_vqa", "text_vqa", "okvqa"])
    add_flag(parser, "samples_per_config", type=int, default=200)
    add_flag(parser, "seed", type=int, default=0)
    add_flag(parser, "extended_grid", action="store_true", help="add top_k {5,7} x blocks {13,15}")
    add_flag(parser, "quirks", action="store_true", help="add the quirks real runs leave behind")
    add_flag(parser, "max_decode_steps", type=int, default=None, help="keep this many T_decode_per_step")
    add_flag(parser, "force", action="store_true",
             help="write into a non-empty --out anyway (same-named files are replaced, the rest stay)")
    parser.set_defaults(func=run)


def check_out(out: Path, force: bool) -> None:
    """Refuse a non-empty folder: a build over it would pool the old files with the new ones."""
    if out.exists() and not out.is_dir():
        raise ControllerError(f"--out {out} is a file; pass a new or empty folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not force:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ControllerError(
            f"--out {out} is not empty ({len(entries)} entries: {shown}); a build would mix them with the "
            "new results: pass a new or empty folder, or --force to write into it anyway"
        )


def run(args: argparse.Namespace) -> int:
    check_out(Path(args.out), args.force)
    summary = generate_sample_results(
        args.out,
        datasets=tuple(args.datasets),
        extended_grid=args.extended_grid,
        samples_per_config=args.samples_per_config,
        seed=args.seed,
        quirks=args.quirks,
        max_decode_steps=args.max_decode_steps,
    )
    print(summary.describe())
    return 0
