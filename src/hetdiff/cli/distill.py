"""hetdiff distill: one dense flow student learns the routed ensemble's velocity."""

from __future__ import annotations

import argparse

from hetdiff.config import MIXED_PRECISION, STRATEGIES, TIME_SAMPLINGS
from hetdiff.models.dit import DIT_CONFIGS


def register(subparsers: argparse._SubParsersAction) -> None:
    from hetdiff.config import DistillSettings

    d = DistillSettings()
    p = subparsers.add_parser(
        "distill",
        help="distill an ensemble of experts + router into one flow expert",
        description="Train a dense flow student on |v_student - u_ensemble|^2 over the union of "
        "the clusters' data; writes OUT/expert.safetensors, usable with `hetdiff sample --expert`.",
    )
    p.add_argument("--experts", required=True, help="folder of expert checkpoints (the registry)")
    p.add_argument("--router", required=True, help="router checkpoint or its folder")
    p.add_argument(
        "--model", choices=DIT_CONFIGS, default=d.model, help="named DiT config of the student"
    )
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--out", required=True, help="output folder of the student")
    p.add_argument(
        "--strategy", choices=STRATEGIES, default=d.strategy, help="teacher routing strategy"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--time-sampling", choices=TIME_SAMPLINGS, default=d.time_sampling)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=d.mixed_precision)
    p.add_argument(
        "--partition", default=None, help="partition manifest: train on the clusters present"
    )
    p.add_argument(
        "--allow-missing", action="store_true", help="teacher: renormalize over present experts"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run exactly")
    p.add_argument(
        "--allow-lr-change",
        action="store_true",
        help="with --resume: continue with this --lr instead of the saved one (after a divergence)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the teacher's networks and the student and fuse AdamW; equal to the "
        "default to float rounding, the first steps pay the compilation",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.config import DistillSettings
    from hetdiff.pipeline.distill import distill_command

    settings = DistillSettings(
        model=args.model,
        strategy=args.strategy,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        time_sampling=args.time_sampling,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        progress=not args.no_progress,
        compile=args.compile,
    )
    distill_command(
        args.experts,
        args.router,
        args.out,
        settings,
        partition=args.partition,
        allow_missing=args.allow_missing,
        resume=args.resume,
        allow_lr_change=args.allow_lr_change,
    )
    return 0
