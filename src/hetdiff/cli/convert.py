"""hetdiff convert: a DDPM expert to a flow-trainable one, or a facebookresearch/DiT file in."""

from __future__ import annotations

import argparse

from hetdiff.models.dit import DIT_CONFIGS
from hetdiff.objectives.kinds import NAMED_SCHEDULES
from hetdiff.pipeline.convert import REFERENCE_T, TARGETS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a DDPM expert for flow training, or import a facebookresearch/DiT file",
        description="--to flow: wrap a DDPM expert in its velocity adapter for flow fine-tuning "
        "(--rehead: a fresh zero velocity head instead). --to expert: a local "
        "facebookresearch/DiT state dict (.pt or .safetensors) as a hetdiff DDPM expert.",
    )
    p.add_argument("--from", dest="source", required=True, help="source checkpoint (local file)")
    p.add_argument("--to", choices=TARGETS, required=True, help="what to make")
    p.add_argument("--out", required=True, help="output folder (or a .safetensors path)")
    p.add_argument(
        "--rehead", action="store_true", help="--to flow: re-initialize the output as a velocity"
    )
    p.add_argument(
        "--model", choices=DIT_CONFIGS, default=None, help="--to expert: the named DiT config"
    )
    p.add_argument("--num-heads", type=int, default=None, help="--to expert: attention heads")
    p.add_argument(
        "--modulation",
        choices=("adaln-zero", "adaln-single"),
        default="adaln-zero",
        help="--to expert: keep DiT's adaLN-Zero (exact) or map onto AdaLN-Single (PixArt)",
    )
    p.add_argument(
        "--schedule", choices=NAMED_SCHEDULES, default="linear", help="--to expert: its schedule"
    )
    p.add_argument(
        "--t-ref", type=float, default=REFERENCE_T, help="--to expert, adaln-single: reference step"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.convert import convert_command

    convert_command(
        args.source,
        args.to,
        args.out,
        rehead=args.rehead,
        model=args.model,
        num_heads=args.num_heads,
        modulation=args.modulation,
        schedule=args.schedule,
        t_ref=args.t_ref,
    )
    return 0
