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
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="text prompt for a caption-conditioned model (repeatable; --n images each)",
    )
    p.add_argument("--prompts", default=None, help="text file of prompts, one a line")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--native", action="store_true", help="DDPM expert: its own DDIM sampler")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--nrow", type=int, default=8, help="images per grid row (with prompts: one row each)"
    )
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

        # load_ensemble checked that the experts share conditioning, text encoder, latent space
        spec = list_experts(args.experts)[0][1]
        num_classes, class_names = spec.num_classes, spec.class_names
        shape = (spec.channels, spec.resolution, spec.resolution)
    prompts, cond = _prompt_conditioning(args, spec)
    if prompts:
        seeds = [args.seed + i for i in range(args.n * len(prompts))]
        args.nrow = args.n
        labels = None
    else:
        labels = class_labels_for(args.n, num_classes, args.class_choice, class_names)
    decode = None
    if spec.autoencoder is not None:
        from hetdiff.models.autoencoder import load_autoencoder

        decode = load_autoencoder(spec.autoencoder, args.device).decode
    if args.native:
        images = _native_ddim(args, spec, velocity, seeds, shape, labels if cond is None else cond)
        images = images if decode is None else decode(images)
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
            cond=cond,
            decode=decode,
        )
    if not torch.isfinite(images).all():
        raise HetdiffError("sampling produced nan/inf; try more --steps or a lower --cfg")
    save_grid(images.clamp(-1, 1), args.out, nrow=args.nrow)
    for row, prompt in enumerate(prompts):
        print(f"row {row}: {prompt!r}")
    print(
        f"wrote {args.out} ({len(seeds)} images, {args.steps} steps, t in "
        f"[{velocity.t_range[0]:.4f}, {velocity.t_range[1]:.4f}])"
    )
    return 0


def _prompt_conditioning(args, spec):
    """(prompts, Conditioning of each prompt repeated --n times) or ([], None); one-line errors
    for prompts to a model without text conditioning and the reverse."""
    from hetdiff.data.captions import check_prompts, read_prompts
    from hetdiff.errors import HetdiffError

    given = args.prompt is not None or args.prompts is not None
    if spec.text_encoder is None:
        if given:
            kind = "class-conditional" if spec.num_classes else "unconditional"
            raise HetdiffError(
                f"prompts were given, but the model is {kind} (not trained on captions); "
                "drop --prompt/--prompts or use --class"
            )
        return [], None
    if args.class_choice is not None:
        raise HetdiffError(
            f"--class {args.class_choice} given, but the model is conditioned on text "
            f"({spec.text_encoder}); use --prompt TEXT instead"
        )
    if not given:
        raise HetdiffError(
            f"the model is conditioned on text ({spec.text_encoder}); pass --prompt TEXT "
            "(repeatable) or --prompts FILE"
        )
    from hetdiff.models.text import encode_prompts, load_text_encoder

    prompts = list(args.prompt or [])
    if args.prompts is not None:
        prompts += read_prompts(args.prompts)
    prompts = check_prompts(prompts)
    encoder = load_text_encoder(spec.text_encoder)
    context_dim = spec.model.get("context_dim")
    if context_dim is not None and encoder.dim != context_dim:
        raise HetdiffError(
            f"text encoder {spec.text_encoder} gives {encoder.dim}-d tokens, the model expects "
            f"{context_dim}; use the encoder the model was trained on"
        )
    repeated = [prompt for prompt in prompts for _ in range(args.n)]
    return prompts, encode_prompts(encoder, repeated).to(args.device)


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
