"""`lookupctl sample-data`: write a SYNTHETIC core_exp results folder for demos and tests."""

from __future__ import annotations

import argparse
from typing import Any

from controller.core_exp.synthetic import generate_sample_results
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
