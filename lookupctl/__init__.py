"""`lookupctl`: one subcommand a module; errors are one line on stderr with a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from controller.errors import ControllerError, MissingExtraError

# Each module defines `register(subparsers)`; the parser it adds sets `func(args) -> int`.
COMMAND_MODULES: tuple[str, ...] = (
    "lookupctl.build",
    "lookupctl.predict",
    "lookupctl.export",
    "lookupctl.inspect",
    "lookupctl.sample_data",
    "lookupctl.profile",
    "lookupctl.store",
    "lookupctl.recalibrate",
    "lookupctl.evaluate",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line (no usage dump), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="lookupctl", description="Latency-budget lookup tables for MoE VLM serving."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ControllerError, MissingExtraError) as e:
        print(f"lookupctl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"lookupctl {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lookupctl {args.command}: interrupted", file=sys.stderr)
        return 130


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs: object) -> None:
    """Add `--some_flag` with its dashed twin `--some-flag` (the seed used underscores)."""
    spellings = [f"--{name}"]
    dashed = name.replace("_", "-")
    if dashed != name:
        spellings.append(f"--{dashed}")
    parser.add_argument(*spellings, dest=name, **kwargs)  # type: ignore[arg-type]
