"""`lookupctl`: one subcommand a module; errors are one line on stderr with a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

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
    "lookupctl.serve",
)

# What a shell reports for a process ended by SIGPIPE (128 + 13), as `yes | head` does.
EXIT_BROKEN_PIPE = 141


def with_twins(option_strings: Sequence[str]) -> list[str]:
    """The option strings plus each long option's other spelling (`--a_b` <-> `--a-b`), in order.

    The seed's scripts pass underscores and people type dashes: every long option takes both.
    """
    out: list[str] = []
    for s in option_strings:
        candidates = [s]
        if s.startswith("--") and len(s) > 2:
            stem = s[2:]
            candidates += [f"--{stem.replace('-', '_')}", f"--{stem.replace('_', '-')}"]
        for c in candidates:
            if c not in out:
                out.append(c)
    return out


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line (no usage dump), exit status 2; every long option in both spellings.

    Subparsers are built with this class too (argparse makes them of the parent's class), so a
    subcommand that calls `add_argument` directly still gets the dashed and underscored twins.
    Argument groups have their own `add_argument`: use `add_flag` there.
    """

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return super().add_argument(*with_twins(args), **kwargs)

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


def _silence_stdout() -> None:
    # The reader of our stdout left (`lookupctl inspect | head`). Python flushes stdout again at
    # exit, which would raise a second BrokenPipeError and print "Exception ignored"; point the
    # descriptor at /dev/null so that flush has somewhere to go.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        # Flush inside the try, so a reader that has gone shows up here and not at interpreter exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except (ControllerError, MissingExtraError) as e:
        print(f"lookupctl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"lookupctl {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lookupctl {args.command}: interrupted", file=sys.stderr)
        return 130


def add_flag(parser: argparse._ActionsContainer, name: str, **kwargs: Any) -> argparse.Action:
    """Add `--some_flag` with its dashed twin `--some-flag` (also on argument groups)."""
    return parser.add_argument(*with_twins([f"--{name}"]), dest=name, **kwargs)
