"""hetdiff train-router: train the router r(k | x_t, t, cond) on a partition's clusters."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
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
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=32, help="conv width (multiple of 8)")
    p.add_argument("--unconditional", action="store_true", help="ignore class labels")
    p.add_argument(
        "--text-encoder",
        default=None,
        help="condition on each image's caption embedded by hash | minilm | a transformers "
        "folder (the experts' --text-encoder); replaces class labels",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run exactly")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.data.datasets import load_dataset
    from hetdiff.data.partition import Partition
    from hetdiff.errors import HetdiffError
    from hetdiff.models.router import RouterConfig, router_accuracy_by_t, train_router
    from hetdiff.training.loop import TrainConfig

    if args.steps < 1:
        raise HetdiffError(f"--steps must be >= 1, got {args.steps}")
    if args.text_encoder is not None and args.unconditional:
        raise HetdiffError("--text-encoder and --unconditional exclude each other; give one")
    dataset = load_dataset(args.data, resolution=args.resolution)
    partition = Partition.load(args.partition)
    context_dim = None
    if args.text_encoder is not None:
        from hetdiff.models.text import load_text_encoder

        context_dim = load_text_encoder(args.text_encoder).dim
    conditional = not args.unconditional and context_dim is None
    config = RouterConfig(
        partition.k,
        dataset.resolution,
        dataset.channels,
        hidden=args.hidden,
        num_classes=dataset.num_classes if conditional else 0,
        context_dim=context_dim,
    )
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(100, args.steps),
        checkpoint_every=max(1, min(500, args.steps)),
        seed=args.seed,
        progress=not args.no_progress,
    )
    path = train_router(
        dataset,
        partition,
        args.steps,
        args.out,
        config,
        train_config,
        resume=args.resume,
        text_encoder=args.text_encoder,
    )
    print(f"wrote {path}")
    from hetdiff.models.router import load_router

    router, _ = load_router(path)
    print("router accuracy per t bucket (prior = always the largest cluster):")
    table = router_accuracy_by_t(
        router, dataset, partition, buckets=10, n=1000, seed=args.seed,
        text_encoder=args.text_encoder,
    )  # fmt: skip
    for row in table:
        print(
            f"  t in [{row.t_lo:.1f}, {row.t_hi:.1f}]: accuracy {row.accuracy:.3f} "
            f"(prior {row.prior_accuracy:.3f}), entropy {row.entropy:.3f}"
        )
    return 0
