"""Generate images from any velocity model (one expert or an ensemble): seeds in, images out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from hetdiff.conditioning import Conditioning
from hetdiff.errors import HetdiffError
from hetdiff.sampling.solvers import StepCallback, seeded_noise, solve


def class_labels_for(
    n: int, num_classes: int, class_choice: str | int | None, class_names: Sequence[str] = ()
) -> Tensor | None:
    """Labels for n samples: None for an unconditional model; a named/indexed class; or, with no
    choice, the classes in turn (0, 1, ..., K-1, 0, ...). "none" or -1 means the null class."""
    if num_classes == 0:
        if class_choice not in (None, "none", -1, "-1"):
            raise HetdiffError(
                f"--class {class_choice} given, but the model is unconditional; drop --class"
            )
        return None
    if class_choice is None:
        return torch.arange(n) % num_classes
    choice = str(class_choice)
    if choice in ("none", "-1"):
        return torch.full((n,), -1, dtype=torch.long)
    if choice.lstrip("-").isdigit():
        index = int(choice)
    else:
        matches = [
            i
            for i, name in enumerate(class_names)
            if name == choice or name.split("/")[-1] == choice
        ]
        if len(matches) != 1:
            shown = ", ".join(name.split("/")[-1] for name in class_names[:12])
            what = "is ambiguous" if matches else "is not a class of this model"
            raise HetdiffError(f"class {choice!r} {what}; classes include: {shown}, ...")
        index = matches[0]
    if not 0 <= index < num_classes:
        raise HetdiffError(f"class index {index} is outside [0, {num_classes}); use -1 for none")
    return torch.full((n,), index, dtype=torch.long)


def draw_conditions(
    dataset: Any,
    n: int,
    seed: int,
    text_encoder: str | None = None,
    class_conditional: bool = True,
    cache_dir: Any = None,
) -> tuple[Tensor | None, Conditioning | None]:
    """Conditions of ``n`` rows drawn from the data (seeded, with replacement), so samples follow
    the data's own class (or caption) frequencies. Returns (class labels (n,) of the drawn rows,
    caption ``Conditioning`` of the same rows): text models sample with the captions (the labels
    stay for per-class metrics), class models with the labels (None), unconditional models get
    (None, None)."""
    if text_encoder is None and not class_conditional:
        return None, None
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(dataset), (n,), generator=gen)
    labels = dataset.labels[rows]
    if text_encoder is None:
        return labels, None
    from hetdiff.training.captions import dataset_caption_bank

    bank, caption_ids = dataset_caption_bank(dataset, text_encoder, cache_dir=cache_dir)
    return labels, bank.conditioning(caption_ids[rows])


def model_sampling_grid(velocity: Any) -> Callable[[int], Tensor] | None:
    """A model's own sampling grid ``grid(steps) -> (steps + 1,) times ending at 0``: its
    ``sampling_grid`` (an imported diffusers flow model: its scheduler's shifted sigmas), or an
    ensemble's when every expert has the same one; None otherwise (uniform in t)."""
    grid = getattr(velocity, "sampling_grid", None)
    experts = getattr(velocity, "experts", None)
    if grid is None and experts is not None and len(experts) > 0:
        grids = [getattr(expert, "sampling_grid", None) for expert in experts]
        grid = grids[0] if all(g is not None and g == grids[0] for g in grids) else None
    return grid


@torch.no_grad()
def generate(
    velocity: Any,
    shape: Sequence[int],
    seeds: Sequence[int],
    steps: int = 30,
    solver: str = "heun",
    labels: Tensor | None = None,
    cfg: float = 1.0,
    shift: float | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
    cond: Conditioning | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Images (len(seeds), *shape) from ``velocity`` (anything with ``t_range`` and
    ``forward(x, t, cond)``), integrating over its valid t-range. Image i depends only on
    seeds[i] (and labels[i] / cond row i). ``cfg`` != 1 applies classifier-free guidance against
    the null condition. ``cond`` (e.g. prompt embeddings, one row per seed) replaces ``labels``;
    ``decode`` (a latent expert's autoencoder) maps each finished batch to pixels. ``shift``
    None: the model's own grid (``velocity.sampling_grid(steps)``: an imported diffusers flow
    model's shifted sigmas) if it has one, else uniform in t (shift 1).
    """
    if labels is not None and cond is not None:
        raise HetdiffError("give labels or cond, not both")
    if cond is not None and cond.batch_size != len(seeds):
        raise HetdiffError(f"cond has {cond.batch_size} rows for {len(seeds)} seeds; give one each")
    t_range = tuple(getattr(velocity, "t_range", (0.0, 1.0)))
    own_grid = model_sampling_grid(velocity) if shift is None else None
    grid = None if own_grid is None else own_grid(steps)
    shift = 1.0 if shift is None else shift
    fn = velocity
    if cfg != 1.0:
        if labels is None and cond is None:
            raise HetdiffError(
                "classifier-free guidance needs a conditional model and labels or prompts"
            )
        from hetdiff.sampling.guidance import guided

        fn = guided(velocity, cfg)
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start : start + batch_size])
        noise = seeded_noise(chunk, shape, device=device)
        rows = torch.arange(start, start + len(chunk))
        if cond is not None:
            chunk_cond = cond.index(rows).to(device)
        else:
            chunk_cond = None if labels is None else labels[rows].to(device)
        sample = solve(fn, noise, steps, t_range, solver, shift, chunk_cond, callback, grid)
        out.append((sample if decode is None else decode(sample)).cpu())
    return torch.cat(out)
