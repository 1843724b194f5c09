"""hetdiff run: the whole pipeline from one config file (the README's main command)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="the whole pipeline: cluster, experts, router, sample, evaluate, report",
        description="Run the pipeline end to end; a killed run resumes when started again.",
    )
    p.add_argument("config", nargs="?", default=None, help="TOML/YAML/JSON config (optional)")
    p.add_argument("--out", default="runs/default", help="run folder (default: %(default)s)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run that finishes in ~2 minutes (hetdiff.config.QUICK replaces the "
        "config's keys it names)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline import run_pipeline

    run_pipeline(args.config, args.out, preset="quick" if args.quick else None)
    return 0
