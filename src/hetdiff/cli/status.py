"""hetdiff status: each expert of a run, where it trains and how far it is."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status",
        help="each expert's job state in a run folder (local, Slurm or Ray)",
        description="One line per expert: launcher, job id, state and the last committed step.",
    )
    p.add_argument("run", help="a run folder (hetdiff run --out)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.status import print_status

    print_status(args.run)
    return 0
