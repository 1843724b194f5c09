"""hetdiff train-expert: train one expert alone on one dataset or one cluster of a partition."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hetdiff.experts.train import ExpertSettings, train_expert


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-expert",
        help="train one expert in isolation (DDPM or flow objective)",
        description="Train one expert on its own data shard; writes OUT/expert.safetensors.",
    )
    d = ExpertSettings()
    p.add_argument(
        "--data", default="mnist5k+animal-mnist", help="dataset spec (default: %(default)s)"
    )
    p.add_argument("--resolution", type=int, default=None, help="image side (default: native)")
    p.add_argument("--objective", choices=["ddpm", "flow"], default=d.objective)
    p.add_argument(
        "--prediction",
        choices=["eps", "x0", "v", "velocity"],
        default=None,
        help="ddpm: eps | x0 | v (default eps); flow: velocity",
    )
    p.add_argument(
        "--schedule", default=d.schedule, help="ddpm schedule: linear | cosine | scaled_linear"
    )
    p.add_argument(
        "--learned-variance", action="store_true", help="ddpm: add variance output channels"
    )
    p.add_argument("--model", default=None, help=f"named DiT config (default: {d.model})")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--mixed-precision", default=d.mixed_precision, help="no | bf16 | fp16 | auto")
    p.add_argument("--unconditional", action="store_true", help="ignore class labels")
    p.add_argument(
        "--text-encoder",
        default=None,
        help="condition on captions embedded by hash | minilm | a transformers folder",
    )
    p.add_argument(
        "--autoencoder", default=None, help="diffusers AutoencoderKL folder: train in its latents"
    )
    p.add_argument("--partition", default=None, help="partition manifest from `hetdiff cluster`")
    p.add_argument("--cluster", type=int, default=None, help="train on this cluster of --partition")
    p.add_argument("--out", required=True, help="output folder for this expert")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run exactly")
    p.add_argument(
        "--init",
        default=None,
        help="start from this flow or converted (`hetdiff convert --to flow`) expert checkpoint "
        "and train it with the flow loss; its architecture and objective are kept",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.data.datasets import load_dataset
    from hetdiff.errors import HetdiffError

    if (args.partition is None) != (args.cluster is None):
        raise HetdiffError("--partition and --cluster go together: give both or neither")
    settings = ExpertSettings(
        objective=args.objective,
        prediction=args.prediction,
        schedule=args.schedule,
        model=args.model or ExpertSettings().model,
        learned_variance=args.learned_variance,
        class_conditional=not args.unconditional,
        text_encoder=args.text_encoder,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        progress=not args.no_progress,
    )
    autoencoder = None
    if args.autoencoder is not None:
        from hetdiff.data.latents import encode_dataset
        from hetdiff.models.autoencoder import load_autoencoder

        autoencoder = load_autoencoder(args.autoencoder)
        pixels = load_dataset(
            args.data, resolution=args.resolution, channels=autoencoder.in_channels
        )
        dataset = encode_dataset(pixels, autoencoder)
    else:
        dataset = load_dataset(args.data, resolution=args.resolution)
    cluster_info: dict = {}
    if args.partition is not None:
        from hetdiff.data.partition import Partition

        partition = Partition.load(args.partition)
        partition.check_dataset(dataset)
        dataset = dataset.subset(partition.ids_of(args.cluster))
        cluster_info = dict(
            cluster_id=args.cluster,
            num_clusters=partition.k,
            partition_fingerprint=partition.fingerprint,
        )
    print(
        f"training {settings.objective} expert ({settings.resolved_prediction}) on "
        f"{len(dataset)} images of {args.data} at {dataset.resolution}px -> {args.out}"
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    resolved = {"settings": settings.__dict__, "data": args.data, **cluster_info}
    print(json.dumps(resolved, default=str))
    if args.init is not None:
        from hetdiff.experts.convert import finetune_expert

        path = finetune_expert(
            args.init, dataset, settings, args.out, resume=args.resume, model=args.model,
            **cluster_info,
        )  # fmt: skip
        print(f"wrote {path}")
        return 0
    path = train_expert(
        dataset,
        settings,
        args.out,
        resume=args.resume,
        autoencoder=None if autoencoder is None else autoencoder.to_dict(),
        **cluster_info,
    )
    print(f"wrote {path}")
    return 0
