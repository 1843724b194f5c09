"""hetdiff run: the whole pipeline from one config file (the README's main command)."""

from __future__ import annotations

import argparse

from hetdiff.config import LAUNCHERS


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
    p.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="where the experts train: processes here, one Slurm job each (submitit) or one "
        "Ray task each; per-expert [[resources]] in the config (default: %(default)s)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="go on without experts whose job failed for good (named in the log and report); "
        "the router is renormalized over the experts present",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline import run_pipeline

    run_pipeline(
        args.config,
        args.out,
        preset="quick" if args.quick else None,
        launcher=args.launcher,
        allow_missing=args.allow_missing,
    )
    return 0
