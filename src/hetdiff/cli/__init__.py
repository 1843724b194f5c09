"""The ``hetdiff`` command: a thin layer of subcommands over the library.

Each subcommand lives in its own module of this package and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` to a handler
``(args: argparse.Namespace) -> int``. A :class:`hetdiff.errors.HetdiffError` raised by a
handler is printed as one line (``hetdiff: error: ...``) and the command exits with status 2; so
is an ``OSError`` (permission, disk full, file-size limit: SIGXFSZ is ignored, so exceeding
``ulimit -f`` fails the write instead of killing the process). Before the handler runs, the
subcommand's ``--out`` is checked (``OUT_KINDS``, ``hetdiff.io.check_output``). Every
subcommand takes ``--trust-unsigned``: accept checkpoints without a digest (this process and the
jobs it starts).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys

from hetdiff import __version__
from hetdiff.errors import HetdiffError
from hetdiff.threads import configure_this_process

# Before any subcommand loads torch: threads for the cores this process may use, and OpenMP
# threads that sleep when idle (a busy neighbour must not make spinning threads collapse a run).
configure_this_process()

# Subcommand modules, in help order. A module not written yet is skipped.
COMMANDS = [
    "run",
    "launch_expert",
    "status",
    "cluster",
    "export_data",
    "features",
    "split",
    "train_expert",
    "train_router",
    "sample",
    "evaluate",
    "convert",
    "import_expert",
    "export",
    "distill",
    "info",
]


# What each subcommand's --out names: a folder ("dir") or a file; convert writes a file when
# --out ends in .safetensors.
OUT_KINDS = {
    "run": "dir",
    "cluster": "file",
    "train-expert": "dir",
    "train-router": "dir",
    "sample": "file",
    "evaluate": "file",
    "convert": "dir",
    "distill": "dir",
    "export-data": "dir",
    "features": "dir",
    "split": "dir",
}
TRUST_ENV = "HETDIFF_TRUST_UNSIGNED"  # hetdiff.experts.signed.TRUST_ENV (read by the loaders)


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
    for subparser in subparsers.choices.values():
        subparser.add_argument(
            "--trust-unsigned",
            action="store_true",
            help="accept checkpoints that carry no digest (written by hetdiff before digests, "
            "or by other tools); their bytes cannot be verified",
        )
    return parser


def _check_out(args: argparse.Namespace) -> None:
    out = getattr(args, "out", None)
    kind = OUT_KINDS.get(getattr(args, "command", None) or "")
    if out is None or kind is None:
        return
    from hetdiff.io import check_output

    if args.command == "convert" and str(out).endswith(".safetensors"):
        kind = "file"
    check_output(out, kind)


def _os_error_line(err: OSError) -> str:
    from hetdiff.io import describe_os_error

    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{describe_os_error(err)}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if hasattr(signal, "SIGXFSZ"):  # over `ulimit -f` a write raises EFBIG instead of dying
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    trusted_before = os.environ.get(TRUST_ENV)
    try:
        if getattr(args, "trust_unsigned", False):
            os.environ[TRUST_ENV] = "1"
        _check_out(args)
        return int(args.func(args) or 0)
    except HetdiffError as err:
        print(f"hetdiff: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"hetdiff: error: {_os_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hetdiff: interrupted; finished artifacts are kept, rerun to resume", file=sys.stderr)
        return 130
    finally:
        if trusted_before is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = trusted_before


def _one_line(err: HetdiffError) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
