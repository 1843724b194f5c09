"""hetdiff train-expert: train one expert alone on one dataset or one cluster of a partition."""

from __future__ import annotations

import argparse

from hetdiff.config import MIXED_PRECISION, ExpertSettings, RunConfig
from hetdiff.config.shards import StreamSettings
from hetdiff.models.dit import DIT_CONFIGS
from hetdiff.objectives.kinds import ALL_PREDICTIONS, NAMED_SCHEDULES, OBJECTIVES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-expert",
        help="train one expert in isolation (DDPM or flow objective)",
        description="Train one expert on its own data shard; writes OUT/expert.safetensors.",
    )
    d = ExpertSettings()
    p.add_argument("--data", default=RunConfig().data, help="dataset spec (default: %(default)s)")
    p.add_argument("--resolution", type=int, default=None, help="image side (default: native)")
    p.add_argument(
        "--stream",
        action="store_true",
        help="read the wds:/parquet:/hf: shards as a shuffled stream (memory bounded by the "
        "shuffle buffer) instead of loading them; resumes at the same sample",
    )
    p.add_argument(
        "--shuffle-buffer",
        type=int,
        default=StreamSettings().shuffle_buffer,
        help="with --stream: samples in the shuffle buffer (default: %(default)s)",
    )
    p.add_argument(
        "--decode-workers",
        type=int,
        default=StreamSettings().decode_workers,
        help="with --stream: threads decoding each batch and the next one ahead while a step "
        "trains; 0 decodes inline; batches are the same either way (default: %(default)s)",
    )
    p.add_argument("--objective", choices=OBJECTIVES, default=d.objective)
    p.add_argument(
        "--prediction",
        choices=ALL_PREDICTIONS,
        default=None,
        help="ddpm: eps | x0 | v (default eps); flow: velocity",
    )
    p.add_argument(
        "--schedule", choices=NAMED_SCHEDULES, default=None, help="ddpm schedule (default linear)"
    )
    p.add_argument(
        "--learned-variance", action="store_true", help="ddpm: add variance output channels"
    )
    p.add_argument(
        "--model", choices=DIT_CONFIGS, default=None, help=f"named DiT config (default: {d.model})"
    )
    p.add_argument(
        "--min-snr-gamma",
        type=float,
        default=d.min_snr_gamma,
        metavar="G",
        help="ddpm: weight the loss by min-SNR-gamma (Hang et al. 2023 use 5; default: unweighted)",
    )
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=d.mixed_precision)
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each DiT block in the backward pass: less memory, about 1.3x the time",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network and fuse AdamW; equal to the default to float rounding, "
        "not bitwise; the first steps pay the compilation, about 20-60 s on CPU",
    )
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
        "--allow-lr-change",
        action="store_true",
        help="with --resume: continue with this --lr instead of the saved one (after a divergence)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="start from this flow or converted (`hetdiff convert --to flow`) expert checkpoint "
        "and train it with the flow loss; its architecture and objective are kept",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.training.jobs import ExpertJob, run_expert_job

    settings = ExpertSettings(
        objective=args.objective,
        prediction=args.prediction,
        schedule=args.schedule,
        model=args.model or ExpertSettings().model,
        learned_variance=args.learned_variance,
        class_conditional=not args.unconditional,
        text_encoder=args.text_encoder,
        min_snr_gamma=args.min_snr_gamma,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        progress=not args.no_progress,
        compile=args.compile,
    )
    job = ExpertJob(
        data=args.data,
        out=args.out,
        settings=settings,
        resolution=args.resolution,
        partition=args.partition,
        cluster=args.cluster,
        resume=args.resume,
        init=args.init,
        init_model=args.model if args.init is not None else None,
        autoencoder=args.autoencoder,
        allow_lr_change=args.allow_lr_change,
        stream=args.stream,
        shuffle_buffer=args.shuffle_buffer if args.stream else None,
        decode_workers=args.decode_workers if args.stream else None,
    )
    run_expert_job(job)
    return 0
