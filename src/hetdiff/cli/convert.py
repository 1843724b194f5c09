"""hetdiff convert: a DDPM expert to a flow-trainable one, or a facebookresearch/DiT file in."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a DDPM expert for flow training, or import a facebookresearch/DiT file",
        description="--to flow: wrap a DDPM expert in its velocity adapter for flow fine-tuning "
        "(--rehead: a fresh zero velocity head instead). --to expert: a local "
        "facebookresearch/DiT state dict (.pt or .safetensors) as a hetdiff DDPM expert.",
    )
    p.add_argument("--from", dest="source", required=True, help="source checkpoint (local file)")
    p.add_argument("--to", choices=["flow", "expert"], required=True, help="what to make")
    p.add_argument("--out", required=True, help="output folder (or a .safetensors path)")
    p.add_argument(
        "--rehead", action="store_true", help="--to flow: re-initialize the output as a velocity"
    )
    p.add_argument("--model", default=None, help="--to expert: the named DiT config it must be")
    p.add_argument("--num-heads", type=int, default=None, help="--to expert: attention heads")
    p.add_argument(
        "--modulation",
        choices=["adaln-zero", "adaln-single"],
        default="adaln-zero",
        help="--to expert: keep DiT's adaLN-Zero (exact) or map onto AdaLN-Single (PixArt)",
    )
    p.add_argument("--schedule", default="linear", help="--to expert: its DDPM schedule")
    p.add_argument(
        "--t-ref", type=float, default=500.0, help="--to expert, adaln-single: reference step"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.errors import HetdiffError
    from hetdiff.experts.convert import checkpoint_path, convert_to_flow

    if args.to == "flow":
        for flag, value in (("--model", args.model), ("--num-heads", args.num_heads)):
            if value is not None:
                raise HetdiffError(f"{flag} applies to --to expert only; drop it")
        path = convert_to_flow(args.source, args.out, rehead=args.rehead)
    else:
        from hetdiff.models.dit_import import import_dit_expert

        if args.rehead:
            raise HetdiffError("--rehead applies to --to flow; import first, then convert")
        path = import_dit_expert(
            args.source,
            checkpoint_path(args.out),
            model=args.model,
            num_heads=args.num_heads,
            modulation=args.modulation,
            schedule=args.schedule,
            t_ref=args.t_ref,
        )
    from hetdiff.experts.store import read_spec

    spec = read_spec(path)
    print(
        f"wrote {path} ({spec.objective}, {spec.prediction}; provenance: {sorted(spec.provenance)})"
    )
    return 0
