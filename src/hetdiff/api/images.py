"""Images from any velocity model: seeds, classes or prompts in, a tensor of images out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.sampling.ensemble import TOP_P, Ensemble


def _labels(classes: str | int | Sequence[int] | Tensor | None, n: int, spec: Any) -> Tensor | None:
    """Class labels (n,) for ``classes``; None for an unconditional model."""
    from hetdiff.sampling.generate import class_labels_for

    if classes is not None and not isinstance(classes, str | int):
        labels = torch.as_tensor(list(classes), dtype=torch.long)
        if labels.shape != (n,):
            raise HetdiffError(f"classes lists {labels.numel()} labels for n={n} images")
        return labels
    if spec is None:  # a model of your own: labels only when you give them
        if isinstance(classes, str) and classes not in ("none", "-1"):
            raise HetdiffError(
                f"class {classes!r} by name needs a loaded model (its spec has the class names); "
                "give a class index"
            )
        return None if classes is None else torch.full((n,), int(classes), dtype=torch.long)
    return class_labels_for(n, spec.num_classes, classes, spec.class_names)


def sample(
    model: Any,
    n: int = 16,
    *,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    steps: int = 30,
    solver: str = "heun",
    shift: float = 1.0,
    cfg: float = 1.0,
    classes: str | int | Sequence[int] | Tensor | None = None,
    prompts: Sequence[str] | None = None,
    strategy: str | None = None,
    top_k: int = 2,
    top_p: float = TOP_P,
    shape: Sequence[int] | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw images by integrating dx/dt = v(x, t, cond) from noise (t = t_max) to data (t = 0).

    Args:
        model: an expert or ensemble from ``load_expert`` / ``load_ensemble`` /
            ``make_ensemble``, or any ``velocity_expert``; anything with
            ``forward(x, t, cond) -> v`` and ``t_range`` works when ``shape`` is given.
        n: images (per prompt, with ``prompts``), >= 1; default 16.
        seed: image i starts from noise seeded by ``seed + i`` (default 0).
        seeds: one seed per image instead (length n, or n x len(prompts)).
        steps: solver steps, >= 1 (default 30); Heun costs 2 evaluations per step.
        solver: ``"heun"`` (default) or ``"euler"`` (``hetdiff.SOLVERS``).
        shift: time-grid shift toward noise, > 0; 1 = uniform in t (default).
        cfg: classifier-free guidance scale; 1 = the conditional velocity (default),
            v = v_null + cfg (v_cond - v_null) otherwise (needs classes or prompts).
        classes: a class name or index for every image, a sequence of n indices, ``"none"``
            (the null class), or None: the classes in turn (0, 1, ..., K-1, 0, ...) for a
            class-conditional model, no labels otherwise.
        prompts: texts for a caption-conditioned model; n images each, in prompt order.
        strategy: route a loaded ensemble with another strategy for this call
            (``"full"``, ``"top-k"``, ``"top1"``, ``"sample"``, ``"nucleus"``); None keeps
            the model's.
        top_k: k of ``strategy="top-k"`` (default 2).
        top_p: the weight ``strategy="nucleus"`` keeps, in (0, 1] (default 0.9).
        shape: (C, H, W) of one image; default from ``model.spec`` (channels, resolution).
        batch_size: images integrated at once (default 64); results do not depend on it.
        device: where the noise and the model run; images come back on the CPU.

    Returns:
        float32 tensor (N, C, H, W) on the CPU, N = n (n x len(prompts) with prompts); pixel
            values about [-1, 1] (clamp before saving; latent experts are decoded to pixels).
            Image i depends only on its seed and condition: not on the batch or the device order.
    """
    from hetdiff.sampling.generate import generate

    if n < 1 or steps < 1:
        raise HetdiffError(f"n and steps must be >= 1, got n={n}, steps={steps}")
    spec = getattr(model, "spec", None)
    if strategy is not None:
        if not isinstance(model, Ensemble):
            raise HetdiffError("strategy= applies to an ensemble; this model is one expert")
        from hetdiff.api.experts import with_strategy

        model = with_strategy(model, strategy, top_k, seed, top_p)
    if shape is None:
        if spec is None:
            raise HetdiffError("give shape=(C, H, W): this model carries no spec to read it from")
        shape = (spec.channels, spec.resolution, spec.resolution)
    cond, labels, rows = None, None, n
    if prompts is not None:
        if spec is None:
            raise HetdiffError(
                "prompts need a loaded text-conditioned model (its spec names the encoder)"
            )
        from hetdiff.pipeline.sample import _prompt_conditioning

        choice = None if classes is None else str(classes)
        texts, cond = _prompt_conditioning(spec, n, list(prompts), None, choice, str(device))
        rows = n * len(texts)
    elif spec is not None and spec.text_encoder is not None:
        raise HetdiffError(f"the model is conditioned on text ({spec.text_encoder}); give prompts=")
    else:
        labels = _labels(classes, n, spec)
    seeds = [seed + i for i in range(rows)] if seeds is None else [int(s) for s in seeds]
    if len(seeds) != rows:
        raise HetdiffError(f"got {len(seeds)} seeds for {rows} images; give one seed per image")
    decode = None
    if spec is not None and spec.autoencoder is not None:
        from hetdiff.models.autoencoder import load_autoencoder

        decode = load_autoencoder(spec.autoencoder, device).decode
    images = generate(
        model, tuple(shape), seeds, steps, solver, labels, cfg, shift, batch_size, device,
        cond=cond, decode=decode,
    )  # fmt: skip
    if not torch.isfinite(images).all():
        raise HetdiffError("sampling produced nan/inf; try more steps or a lower cfg")
    return images


def save_images(images: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write images (N, C, H, W), values in [-1, 1] (clamped), as one PNG grid of ``nrow``
    images per row, atomically; returns the path."""
    from hetdiff.data.montage import save_grid

    save_grid(images.detach().cpu().clamp(-1, 1), str(path), nrow=nrow)
    return Path(path)
