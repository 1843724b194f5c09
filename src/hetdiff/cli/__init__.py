"""The ``hetdiff`` command: a thin layer of subcommands over the library.

Each subcommand lives in its own module of this package and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` to a handler
``(args: argparse.Namespace) -> int``. A :class:`hetdiff.errors.HetdiffError` raised by a
handler is printed as one line (``hetdiff: error: ...``) and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from hetdiff import __version__
from hetdiff.errors import HetdiffError

# Subcommand modules, in help order. A module not written yet is skipped.
COMMANDS = [
    "run",
    "cluster",
    "train_expert",
    "train_router",
    "sample",
    "evaluate",
    "convert",
    "distill",
    "info",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hetdiff",
        description="Heterogeneous decentralized diffusion: isolated experts, one velocity space.",
    )
    parser.add_argument("--version", action="version", version=f"hetdiff {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"hetdiff.cli.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except HetdiffError as err:
        print(f"hetdiff: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hetdiff: interrupted; finished artifacts are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
