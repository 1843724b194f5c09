"""hetdiff train-router: train the router r(k | x_t, t, cond) on a partition's clusters.

    hetdiff train-router --partition partition.json --out DIR [--text-encoder hash]
        [--router-arch transformer --router-size tiny]

Writes DIR/router.safetensors and prints its accuracy per t-bucket. Defaults come from
``hetdiff.config.RouterSettings`` (the policy ``hetdiff run`` uses too); the work is
``hetdiff.pipeline.router.train_router_command``.
"""

from __future__ import annotations

import argparse

from hetdiff.config import ROUTER_ARCHS, ROUTER_SIZES, RouterSettings

DEFAULTS = RouterSettings()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-router`` subcommand."""
    p = subparsers.add_parser(
        "train-router",
        help="train the router that weighs the experts",
        description="Train a router to predict the cluster of x0 from x_t; writes OUT/router.safetensors.",
    )
    p.add_argument(
        "--data", default="mnist5k+animal-mnist", help="dataset spec (default: %(default)s)"
    )
    p.add_argument("--resolution", type=int, default=None, help="image side (default: native)")
    p.add_argument("--partition", required=True, help="partition manifest from `hetdiff cluster`")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
    p.add_argument("--hidden", type=int, default=DEFAULTS.hidden, help="conv width (multiple of 8)")
    p.add_argument(
        "--router-arch",
        choices=ROUTER_ARCHS,
        default=DEFAULTS.arch,
        help="film: the FiLM conv router (--hidden); transformer: AdaLN-Single DiT blocks and a "
        "pooled head (--router-size) (default: %(default)s)",
    )
    p.add_argument(
        "--router-size",
        choices=ROUTER_SIZES,
        default=DEFAULTS.size,
        help="named transformer router size; DiT-B/2 is the released 8-expert model's "
        "(~129M parameters) (default: %(default)s)",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=DEFAULTS.warmup_steps,
        help="linear lr warm-up, capped at --steps (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULTS.checkpoint_every,
        help="steps between checkpoints (default: steps // 2)",
    )
    p.add_argument(
        "--label-dropout",
        type=float,
        default=DEFAULTS.label_dropout,
        help="P(condition -> null) in training (default: %(default)s)",
    )
    p.add_argument("--unconditional", action="store_true", help="ignore class labels")
    p.add_argument(
        "--text-encoder",
        default=None,
        help="condition on each image's caption embedded by hash | minilm | a transformers "
        "folder (the experts' --text-encoder); replaces class labels",
    )
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run exactly")
    p.add_argument(
        "--allow-lr-change",
        action="store_true",
        help="with --resume: continue with this --lr instead of the saved one (after a divergence)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.router import train_router_command

    settings = RouterSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        hidden=args.hidden,
        arch=args.router_arch,
        size=args.router_size,
        warmup_steps=args.warmup_steps,
        checkpoint_every=args.checkpoint_every,
        label_dropout=args.label_dropout,
        seed=args.seed,
        progress=not args.no_progress,
    )
    train_router_command(
        args.data,
        args.resolution,
        args.partition,
        args.out,
        settings,
        class_conditional=not args.unconditional,
        text_encoder=args.text_encoder,
        resume=args.resume,
        allow_lr_change=args.allow_lr_change,
    )
    return 0
