"""``hetdiff sample`` as one library call: a PNG grid from one expert or a routed ensemble.

The velocity comes from one checkpoint (``experts.build.load_velocity_model``) or from a
registry plus a router (``sampling.ensemble.load_ensemble``); the conditions are class labels
in turn, a named class, or text prompts (caption-conditioned models); images are drawn on the
flow ODE (``sampling.generate``) or, for one DDPM expert with ``native``, by its own DDIM
sampler; latent experts are decoded by their autoencoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hetdiff.config import SampleSettings
from hetdiff.errors import HetdiffError
from hetdiff.experts.spec import ExpertSpec


def _prompt_conditioning(
    spec: ExpertSpec,
    n: int,
    prompt: list[str] | None,
    prompts_file: str | Path | None,
    class_choice: str | None,
    device: str,
) -> tuple[list[str], Any]:
    """(prompts, Conditioning of each prompt repeated ``n`` times) or ([], None); one-line errors
    for prompts to a model without text conditioning and the reverse."""
    from hetdiff.data.captions import check_prompts, read_prompts

    given = prompt is not None or prompts_file is not None
    if spec.text_encoder is None:
        if given:
            kind = "class-conditional" if spec.num_classes else "unconditional"
            raise HetdiffError(
                f"prompts were given, but the model is {kind} (not trained on captions); "
                "drop --prompt/--prompts or use --class"
            )
        return [], None
    if class_choice is not None:
        raise HetdiffError(
            f"--class {class_choice} given, but the model is conditioned on text "
            f"({spec.text_encoder}); use --prompt TEXT instead"
        )
    if not given:
        raise HetdiffError(
            f"the model is conditioned on text ({spec.text_encoder}); pass --prompt TEXT "
            "(repeatable) or --prompts FILE"
        )
    from hetdiff.models.text import encode_prompts, load_text_encoder

    texts = list(prompt or [])
    if prompts_file is not None:
        texts += read_prompts(prompts_file)
    texts = check_prompts(texts)
    encoder = load_text_encoder(spec.text_encoder)
    context_dim = spec.model.get("context_dim")
    if context_dim is not None and encoder.dim != context_dim:
        raise HetdiffError(
            f"text encoder {spec.text_encoder} gives {encoder.dim}-d tokens, the model expects "
            f"{context_dim}; use the encoder the model was trained on"
        )
    repeated = [text for text in texts for _ in range(n)]
    return texts, encode_prompts(encoder, repeated).to(device)


def _native_ddim(
    velocity: Any,
    spec: ExpertSpec,
    seeds: list[int],
    shape: tuple[int, int, int],
    steps: int,
    cond: Any,
    device: str,
    spacing: str | None = None,
) -> torch.Tensor:
    """Images from a DDPM expert's own DDIM sampler (eta = 0) on ``steps`` of its schedule;
    ``spacing`` (leading, trailing, linspace) steps to diffusers' DDIMScheduler targets, with
    the expert's recorded steps_offset, set_alpha_to_one and clip_sample."""
    from hetdiff.experts.build import native_ddim
    from hetdiff.sampling.solvers import ddim_timesteps, sample_ddim, seeded_noise

    schedule, prediction, learned_variance = native_ddim(spec)
    noise = seeded_noise(seeds, shape, device=device)
    cond = None if cond is None else cond.to(device)
    if spacing is not None:
        from hetdiff.experts.diffusers_import import sampler_conventions
        from hetdiff.sampling.solvers import sample_ddim_spaced

        conventions = sampler_conventions(spec)
        return sample_ddim_spaced(
            velocity.net, schedule, prediction, noise, steps, spacing, cond, learned_variance,
            conventions["steps_offset"], conventions["set_alpha_to_one"],
            conventions["clip_sample_range"],
        ).cpu()  # fmt: skip
    timesteps = ddim_timesteps(schedule, steps)
    return sample_ddim(
        velocity.net, schedule, prediction, noise, timesteps, cond, learned_variance
    ).cpu()


def sample_command(
    out: str | Path,
    expert: str | Path | None = None,
    experts: str | Path | None = None,
    router: str | Path | None = None,
    strategy: str = "full",
    top_k: int = 2,
    allow_missing: bool = False,
    n: int = 16,
    steps: int = 30,
    solver: str = "heun",
    shift: float | None = None,
    cfg: float = 1.0,
    class_choice: str | None = None,
    prompt: list[str] | None = None,
    prompts_file: str | Path | None = None,
    seed: int = 0,
    native: bool = False,
    device: str = "cpu",
    nrow: int = 8,
    spacing: str | None = None,
    top_p: float = SampleSettings.top_p,
    compile: bool = SampleSettings.compile,
) -> Path:
    """Sample a grid of images into the PNG ``out`` and return its path.

    One expert (``expert``, a checkpoint) or an ensemble (``experts`` folder + ``router``, with
    ``strategy`` / ``top_k`` / ``top_p`` / ``allow_missing``). Image i uses seed ``seed + i``. Class models
    sample ``n`` images with ``class_choice`` (a name, an index, "none") or the classes in turn;
    text models sample ``n`` images per prompt (``prompt`` list and/or ``prompts_file``), one
    grid row each. ``native`` uses a DDPM expert's own DDIM sampler (no guidance); ``spacing``
    gives it diffusers' DDIMScheduler timestep spacing and step targets. ``compile``: every
    network (experts, router) compiled for inference (``sampling.compiled``): the same images
    to float rounding, the first batch pays the compilation.
    """
    from hetdiff.data.montage import save_grid
    from hetdiff.sampling.generate import class_labels_for, generate

    if n < 1 or steps < 1:
        raise HetdiffError(f"--n and --steps must be >= 1, got {n} and {steps}")
    if (expert is None) == (experts is None):
        raise HetdiffError("give one of --expert CKPT or --experts DIR")
    if native and expert is None:
        raise HetdiffError("--native needs one DDPM expert (--expert CKPT of a ddpm objective)")
    if spacing is not None and not native:
        raise HetdiffError("--spacing applies to --native DDIM sampling; add --native")
    if native and cfg != 1.0:
        raise HetdiffError("--native does not apply guidance; drop --cfg or --native")
    seeds = [seed + i for i in range(n)]
    if expert is not None:
        from hetdiff.experts.build import load_velocity_model

        velocity, spec = load_velocity_model(expert, device)
    else:
        if not router:
            raise HetdiffError("--experts needs --router (a router checkpoint or its folder)")
        from hetdiff.experts.store import list_experts
        from hetdiff.sampling.ensemble import load_ensemble

        velocity = load_ensemble(
            experts, router, device=device, strategy=strategy, top_k=top_k,
            allow_missing=allow_missing, seed=seed, top_p=top_p,
        )  # fmt: skip
        # load_ensemble checked that the experts share conditioning, text encoder, latent space
        spec = list_experts(experts)[0][1]
    if compile:
        from hetdiff.sampling.compiled import compile_for_sampling

        compile_for_sampling(velocity)
    shape = (spec.channels, spec.resolution, spec.resolution)
    prompts, cond = _prompt_conditioning(spec, n, prompt, prompts_file, class_choice, device)
    if prompts:
        seeds = [seed + i for i in range(n * len(prompts))]
        nrow = n
        labels = None
    else:
        labels = class_labels_for(n, spec.num_classes, class_choice, spec.class_names)
    decode = None
    if spec.autoencoder is not None:
        from hetdiff.models.autoencoder import load_autoencoder

        decode = load_autoencoder(spec.autoencoder, device).decode
    if native:
        images = _native_ddim(
            velocity, spec, seeds, shape, steps, labels if cond is None else cond, device,
            spacing,
        )  # fmt: skip
        images = images if decode is None else decode(images)
    else:
        images = generate(
            velocity, shape, seeds, steps, solver, labels, cfg, shift, device=device, cond=cond,
            decode=decode,
        )  # fmt: skip
    if not torch.isfinite(images).all():
        raise HetdiffError("sampling produced nan/inf; try more --steps or a lower --cfg")
    save_grid(images.clamp(-1, 1), out, nrow=nrow)
    for row, text in enumerate(prompts):
        print(f"row {row}: {text!r}")
    print(
        f"wrote {out} ({len(seeds)} images, {steps} steps, t in "
        f"[{velocity.t_range[0]:.4f}, {velocity.t_range[1]:.4f}])"
    )
    return Path(out)
