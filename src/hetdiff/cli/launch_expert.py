"""hetdiff launch-expert: train one expert of a run where its island's compute is."""

from __future__ import annotations

import argparse

from hetdiff.config import LAUNCHERS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "launch-expert",
        help="train one expert of a run on this island (local, Slurm or Ray)",
        description="Train expert K of the run at RUN (a folder or an fsspec URL such as "
        "s3://bucket/run) with its own [[resources]], and put it under RUN; a later "
        "`hetdiff run` on RUN keeps it.",
    )
    p.add_argument("run", help="the run's folder or artifact root (hetdiff run --out)")
    p.add_argument("--expert", type=int, required=True, metavar="K", help="the expert, from 0")
    p.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="where it trains: a process here, a Slurm job (submitit) or a Ray actor "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="the run's config, for a RUN that holds no run yet (default: RUN's config.json)",
    )
    p.add_argument("--quick", action="store_true", help="the QUICK preset, as hetdiff run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.launch_expert import launch_expert

    path = launch_expert(
        args.run, args.expert, args.launcher, args.config, "quick" if args.quick else None
    )
    print(f"expert {args.expert}: {path}")
    return 0
