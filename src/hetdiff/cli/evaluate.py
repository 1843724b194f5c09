"""hetdiff evaluate: FID, diversity, router accuracy and FLOPs of an ensemble and its experts."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="FID / diversity / router accuracy / FLOPs of an ensemble",
        description="Sample from the ensemble (each strategy) and each expert alone, then measure.",
    )
    p.add_argument("--experts", required=True, help="folder of expert checkpoints")
    p.add_argument("--router", required=True, help="router checkpoint or folder")
    p.add_argument("--partition", default=None, help="manifest: per-cluster FID, router accuracy")
    p.add_argument("--n", type=int, default=256, help="samples per model")
    p.add_argument("--reference-n", type=int, default=1000, help="real images for FID statistics")
    p.add_argument("--strategies", default="top1,full", help="comma-separated strategies")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--solver", default="heun")
    p.add_argument("--cfg", type=float, default=1.0)
    p.add_argument("--no-fid", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="metrics JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from hetdiff.data.datasets import load_dataset
    from hetdiff.errors import HetdiffError
    from hetdiff.experts.build import load_velocity_model
    from hetdiff.experts.store import list_experts
    from hetdiff.io import atomic_write_json
    from hetdiff.metrics.evaluate import EvalSettings, evaluate
    from hetdiff.sampling.ensemble import load_ensemble
    from hetdiff.sampling.generate import draw_conditions, generate

    if args.n < 2:
        raise HetdiffError(f"--n must be >= 2 for FID and diversity, got {args.n}")
    entries = list_experts(args.experts)
    spec = entries[0][1]
    dataset = load_dataset(spec.data_spec, resolution=spec.resolution)
    partition = None
    if args.partition:
        from hetdiff.data.partition import Partition

        partition = Partition.load(args.partition)
        partition.check_dataset(dataset)
    shape = (spec.channels, spec.resolution, spec.resolution)
    seeds = list(range(10_000, 10_000 + args.n))
    # text experts sample with captions of drawn rows (their labels stay for the diversity)
    labels, captions = draw_conditions(
        dataset, args.n, args.seed, spec.text_encoder, bool(spec.num_classes)
    )
    strategies = {}
    for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        ens = load_ensemble(
            args.experts, args.router, strategy=strategy, top_k=args.top_k, seed=args.seed
        )
        sample_labels = None if captions is not None else labels
        images = generate(
            ens, shape, seeds, args.steps, args.solver, sample_labels, args.cfg, cond=captions
        )
        strategies[strategy] = (images, labels)
    experts = {}
    for path, expert_spec in entries:
        velocity, _ = load_velocity_model(path)
        null = None if labels is None or captions is not None else torch.full_like(labels, -1)
        images = generate(velocity, shape, seeds, args.steps, args.solver, null)
        experts[f"expert-{expert_spec.cluster_id}"] = (images, None)
    settings = EvalSettings(
        n=args.n, fid=not args.no_fid, reference_n=args.reference_n, seed=args.seed,
        solver=args.solver, steps=args.steps, top_k=args.top_k,
    )  # fmt: skip
    metrics = evaluate(
        strategies, experts, [p for p, _ in entries], args.router, dataset, partition, settings
    )
    atomic_write_json(args.out, metrics)
    print(f"wrote {args.out}")
    return 0
