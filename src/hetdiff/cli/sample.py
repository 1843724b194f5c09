"""hetdiff sample: images from one expert (--expert) or an ensemble (--experts + --router)."""

from __future__ import annotations

import argparse


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
    p.add_argument("--strategy", default="full", help="full | top-k | top1 | sample")
    p.add_argument("--top-k", type=int, default=2, help="k for --strategy top-k")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="renormalize the router over the experts present",
    )
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--steps", type=int, default=30, help="solver steps")
    p.add_argument("--solver", default="heun", help="euler | heun")
    p.add_argument("--shift", type=float, default=1.0, help="time-grid shift toward noise (>1)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument(
        "--class",
        dest="class_choice",
        default=None,
        help="class name or index (default: classes in turn; 'none' for unconditional)",
    )
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--native", action="store_true", help="DDPM expert: its own DDIM sampler")
    p.add_argument("--device", default="cpu")
    p.add_argument("--nrow", type=int, default=8, help="images per grid row")
    p.add_argument("--out", required=True, help="output PNG grid")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from hetdiff.data.montage import save_grid
    from hetdiff.errors import HetdiffError
    from hetdiff.sampling.generate import class_labels_for, generate

    if args.n < 1 or args.steps < 1:
        raise HetdiffError(f"--n and --steps must be >= 1, got {args.n} and {args.steps}")
    seeds = [args.seed + i for i in range(args.n)]
    if args.expert:
        from hetdiff.experts.build import load_velocity_model

        velocity, spec = load_velocity_model(args.expert, args.device)
        num_classes, class_names = spec.num_classes, spec.class_names
        shape = (spec.channels, spec.resolution, spec.resolution)
    else:
        if not args.router:
            raise HetdiffError("--experts needs --router (a router checkpoint or its folder)")
        from hetdiff.sampling.ensemble import load_ensemble

        velocity = load_ensemble(
            args.experts,
            args.router,
            device=args.device,
            strategy=args.strategy,
            top_k=args.top_k,
            allow_missing=args.allow_missing,
            seed=args.seed,
        )
        from hetdiff.experts.store import list_experts

        spec = list_experts(args.experts)[0][1]
        num_classes, class_names = spec.num_classes, spec.class_names
        shape = (spec.channels, spec.resolution, spec.resolution)
    labels = class_labels_for(args.n, num_classes, args.class_choice, class_names)
    if args.native:
        images = _native_ddim(args, spec, velocity, seeds, shape, labels)
    else:
        images = generate(
            velocity,
            shape,
            seeds,
            args.steps,
            args.solver,
            labels,
            args.cfg,
            args.shift,
            device=args.device,
        )
    if not torch.isfinite(images).all():
        raise HetdiffError("sampling produced nan/inf; try more --steps or a lower --cfg")
    save_grid(images.clamp(-1, 1), args.out, nrow=args.nrow)
    print(
        f"wrote {args.out} ({args.n} images, {args.steps} steps, t in "
        f"[{velocity.t_range[0]:.4f}, {velocity.t_range[1]:.4f}])"
    )
    return 0


def _native_ddim(args, spec, velocity, seeds, shape, labels):
    from hetdiff.errors import HetdiffError
    from hetdiff.objectives.schedules import make_schedule
    from hetdiff.sampling.solvers import ddim_timesteps, sample_ddim, seeded_noise

    if not args.expert or spec.objective != "ddpm":
        raise HetdiffError("--native needs one DDPM expert (--expert CKPT of a ddpm objective)")
    if args.cfg != 1.0:
        raise HetdiffError("--native does not apply guidance; drop --cfg or --native")
    schedule = make_schedule(spec.schedule)
    noise = seeded_noise(seeds, shape, device=args.device)
    cond = None if labels is None else labels.to(args.device)
    return sample_ddim(
        velocity.net,
        schedule,
        spec.prediction,
        noise,
        ddim_timesteps(schedule, args.steps),
        cond,
        spec.learned_variance,
    ).cpu()
