"""hetdiff sample: images from one expert (--expert) or an ensemble (--experts + --router)."""

from __future__ import annotations

import argparse

from hetdiff.config import SOLVERS, SPACINGS, STRATEGIES, SampleSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample",
        help="sample from one expert or a routed ensemble of experts",
        description="Sample a grid of images. One expert: --expert CKPT. "
        "An ensemble: --experts DIR --router DIR.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--expert", help="one expert checkpoint (.safetensors)")
    src.add_argument("--experts", help="a folder of expert checkpoints (the registry)")
    p.add_argument("--router", help="router checkpoint or folder (with --experts)")
    p.add_argument("--strategy", choices=STRATEGIES, default="full", help="ensemble routing")
    p.add_argument("--top-k", type=int, default=2, help="k for --strategy top-k")
    p.add_argument(
        "--top-p",
        type=float,
        default=SampleSettings.top_p,
        help="for --strategy nucleus: keep the fewest experts whose router weights sum to at "
        "least this, in (0, 1] (default: %(default)s)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="renormalize the router over the experts present",
    )
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--steps", type=int, default=30, help="solver steps")
    p.add_argument("--solver", choices=SOLVERS, default="heun", help="ODE solver")
    p.add_argument(
        "--shift",
        type=float,
        default=None,
        help="time-grid shift toward noise (>1); default: an imported diffusers flow model's "
        "own scheduler grid and shift, else 1 (uniform)",
    )
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument(
        "--class",
        dest="class_choice",
        default=None,
        help="class name or index (default: classes in turn; 'none' for unconditional)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="text prompt for a caption-conditioned model (repeatable; --n images each)",
    )
    p.add_argument("--prompts", default=None, help="text file of prompts, one a line")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--native", action="store_true", help="DDPM expert: its own DDIM sampler")
    p.add_argument(
        "--spacing",
        choices=SPACINGS,
        default=None,
        help="with --native: diffusers' DDIMScheduler timestep spacing and step targets",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the experts' networks and the router: faster sampling after a "
        "first batch that pays the compilation; images equal to the default to float rounding",
    )
    p.add_argument(
        "--nrow", type=int, default=8, help="images per grid row (with prompts: one row each)"
    )
    p.add_argument("--out", required=True, help="output PNG grid")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.sample import sample_command

    sample_command(
        args.out,
        expert=args.expert,
        experts=args.experts,
        router=args.router,
        strategy=args.strategy,
        top_k=args.top_k,
        top_p=args.top_p,
        allow_missing=args.allow_missing,
        n=args.n,
        steps=args.steps,
        solver=args.solver,
        shift=args.shift,
        cfg=args.cfg,
        class_choice=args.class_choice,
        prompt=args.prompt,
        prompts_file=args.prompts,
        seed=args.seed,
        native=args.native,
        device=args.device,
        nrow=args.nrow,
        spacing=args.spacing,
        compile=args.compile,
    )
    return 0
