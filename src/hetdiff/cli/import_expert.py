"""hetdiff import-expert: a diffusers model folder (and its scheduler config) as an expert."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-expert",
        help="import a diffusers model folder (UNet2DModel, DiT, PixArt) as an expert",
        description="Read a diffusers model folder written by save_pretrained (config.json, "
        "diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json; or a pipeline "
        "folder with unet/ or transformer/ and scheduler/) and write OUT/expert.safetensors: the "
        "network is diffusers' own class, the objective read from the scheduler config.",
    )
    p.add_argument("path", help="diffusers model or pipeline folder (local)")
    p.add_argument("--cluster", type=int, default=None, help="the cluster this expert serves")
    p.add_argument("--partition", default=None, help="partition manifest: records K, checks it")
    p.add_argument("--experts", default=None, help="an expert registry the model must fit")
    p.add_argument("--text-encoder", default=None, help="text models: the prompts' encoder")
    p.add_argument("--out", required=True, help="output folder (gets expert.safetensors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.hub import import_expert_command

    import_expert_command(
        args.path,
        args.out,
        cluster=args.cluster,
        partition=args.partition,
        experts=args.experts,
        text_encoder=args.text_encoder,
    )
    return 0
