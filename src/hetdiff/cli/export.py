"""hetdiff export: a run's ensemble as a diffusers-style tree (model_index.json, expert_k/, ...)."""

from __future__ import annotations

import argparse

from hetdiff.pipeline.hub import EXPORT_FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a run's experts and router as a diffusers-style tree",
        description="Write model_index.json, expert_k/ (config.json, "
        "diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json), router/ and a "
        "model card README.md. Every expert_k/ loads with diffusers' from_pretrained; hetdiff "
        "reads the tree back with `sample --experts OUT --router OUT/router`.",
    )
    p.add_argument("run", help="a run folder (with experts/ and router/)")
    p.add_argument("--format", dest="fmt", choices=EXPORT_FORMATS, default="diffusers")
    p.add_argument("--out", required=True, help="new output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.hub import export_command

    export_command(args.run, args.out, args.fmt)
    return 0
