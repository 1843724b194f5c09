"""Experts and ensembles as Python objects: load them, wrap your own network, compose them.

Every model here is a velocity function on the common time axis (t in [0, 1], t = 0 data,
t = 1 noise, x_t = (1 - t) x0 + t eps, v = eps - x0):
``model(x (B, C, H, W), t (B,) or scalar, cond) -> v (B, C, H, W)``, with ``model.t_range``
the interval of t it is valid on. A loaded model also carries the ``ExpertSpec`` it was saved
with as ``model.spec`` (for an ensemble: its first expert's, whose resolution, channels,
classes, text encoder and latent space every expert shares), which ``hetdiff.sample`` reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hetdiff.errors import HetdiffError
from hetdiff.objectives.schedules import DiscreteSchedule, ScheduleSpec, make_schedule
from hetdiff.objectives.velocity import DEFAULT_TIME_SCALE, VelocityModel, make_velocity_model
from hetdiff.sampling.ensemble import TOP_P, Ensemble

EXPERT_FILE = "expert.safetensors"  # what `train_expert` writes in its folder


def _local(path: str | Path) -> Path:
    """``path`` itself, or a verified-on-read local copy when it is a store URL."""
    from hetdiff.experts.artifact_store import is_url, local_copy

    return local_copy(str(path)) if is_url(path) else Path(path)


def _expert_file(path: str | Path) -> Path:
    """A checkpoint path, or the checkpoint inside an expert's folder (local or a store URL)."""
    path = _local(path)
    return path / EXPERT_FILE if path.is_dir() else path


def load_expert(
    path: str | Path, device: torch.device | str = "cpu", *, compile: bool = False
) -> VelocityModel:
    """Load one expert checkpoint as a velocity model in eval mode.

    Args:
        path: an expert checkpoint (``.safetensors`` written by ``train_expert``,
            ``hetdiff train-expert`` or ``hetdiff convert``) or the folder holding
            ``expert.safetensors``: a local path or a store URL (``s3://...``, ``file://...``;
            the file is copied to the cache and verified against its digest when read).
        device: where the network's weights go (default ``"cpu"``).
        compile: ``torch.compile`` the network in place for inference (off by default): faster
            sampling once the first call has paid the compilation, velocities equal to the
            eager ones to float rounding (``hetdiff.sampling.compiled``).

    Returns:
        The expert's adapter (flow, or DDPM read through its own schedule), with ``.spec`` (its
            ``ExpertSpec``) and ``.t_range`` (``(0, 1)`` for flow; about ``(0.0099, 0.9937)`` for a
            linear 1e-4..0.02, T = 1000 DDPM schedule). A changed, truncated or spec-less file is a
            one-line ``HetdiffError``; loading never unpickles.
    """
    from hetdiff.experts.build import load_velocity_model

    velocity, spec = load_velocity_model(_expert_file(path), device)
    velocity.spec = spec
    if compile:
        from hetdiff.sampling.compiled import compile_for_sampling

        compile_for_sampling(velocity)
    return velocity


def load_ensemble(
    experts: str | Path,
    router: str | Path | None = None,
    *,
    strategy: str = "full",
    top_k: int = 2,
    top_p: float = TOP_P,
    allow_missing: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
    compile: bool = False,
) -> Ensemble:
    """Load a registry of experts and their router as one routed ensemble.

    ``u(x_t, t, cond) = sum_k r_k(x_t, t, cond) v_k(x_t, t, cond)`` over the experts present.

    Args:
        experts: a folder of expert checkpoints (one per cluster, directly or one folder down),
            a ``hetdiff run`` folder (its ``experts/`` and ``router/`` are used), or an exported
            diffusers-style tree (``hetdiff export``; its router is ``TREE/router``). Local, or
            a store URL (``s3://...``): copied to the cache, each checkpoint verified on read.
        router: the router checkpoint or its folder (local or a store URL); ``None`` only for a
            run folder.
        strategy: ``"full"`` (every expert, weighted), ``"top-k"`` (the k largest weights,
            renormalized), ``"top1"`` (one expert per row), ``"sample"`` (one expert per row
            drawn from the weights at every step) or ``"nucleus"`` (per row the fewest largest
            weights that sum to at least ``top_p``, renormalized); ``hetdiff.STRATEGIES``.
        top_k: k of ``"top-k"``, 1 <= k <= number of experts (default 2).
        top_p: the weight ``"nucleus"`` keeps, in (0, 1] (default 0.9; 1 keeps every expert).
        allow_missing: allow clusters without an expert; the router is renormalized over the
            experts present (with a warning).
        seed: seeds the draws of ``"sample"`` (default 0).
        device: where the experts and the router go.
        compile: ``torch.compile`` each expert's network and the router in place for inference
            (off by default): faster sampling once the first call has paid the compilation
            (about 1.2x for DiT-XL/2 experts on an H200), the same images to float rounding
            (``hetdiff.sampling.compiled``).

    Returns:
        An ``Ensemble`` with ``.spec`` (its first expert's ``ExpertSpec``) and ``.t_range``
            (the interval every expert covers). Experts that do not fit each other or the router
            (resolution, channels, conditioning, text encoder, latent space, partition) are a
            one-line ``HetdiffError`` naming the checkpoints and the fix.
    """
    from hetdiff.experts.store import list_experts
    from hetdiff.sampling.ensemble import load_ensemble as load

    folder = _local(experts)
    router = None if router is None else _local(router)
    if router is None:
        from hetdiff.pipeline.layout import RunLayout

        layout = RunLayout(folder)
        if not (layout.experts.is_dir() and layout.router.is_dir()):
            raise HetdiffError(
                f"{folder} is not a run folder (no experts/ and router/); pass router=PATH "
                "with a folder of expert checkpoints"
            )
        folder, router = layout.experts, layout.router
    ensemble = load(
        folder, router, device=device, strategy=strategy, top_k=top_k,
        allow_missing=allow_missing, seed=seed, top_p=top_p,
    )  # fmt: skip
    ensemble.spec = list_experts(folder)[0][1]
    if compile:
        from hetdiff.sampling.compiled import compile_for_sampling

        compile_for_sampling(ensemble)
    return ensemble


def velocity_expert(
    net: nn.Module,
    objective: str = "flow",
    prediction: str | None = None,
    schedule: str | ScheduleSpec | dict[str, Any] | DiscreteSchedule | None = None,
    *,
    learned_variance: bool = False,
    time_scale: float = DEFAULT_TIME_SCALE,
) -> VelocityModel:
    """Wrap any network as a velocity expert on the common time axis.

    The network is called as ``net(x, timestep, cond)`` and must return a tensor of ``x``'s
    shape (``(B, 2C, H, W)`` with ``learned_variance``; the variance half is dropped):

    - ``objective="flow"``: ``net`` predicts v = eps - x0 at ``timestep = t * time_scale``
      (default 1000), ``x = x_t``. ``prediction`` must be None or ``"velocity"``.
    - ``objective="ddpm"``: ``net`` was trained on x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps
      at integer steps s of ``schedule``; it is read at the fractional step s* whose abar
      matches the signal-to-noise ratio of t, abar(t) = (1 - t)^2 / ((1 - t)^2 + t^2), on the
      input x_s = x_t / sqrt((1 - t)^2 + t^2). ``prediction``: ``"eps"`` (default), ``"x0"``
      or ``"v"`` (v_ddpm = sqrt(abar) eps - sqrt(1 - abar) x0). ``schedule``: a name
      (``"linear"`` default, ``"cosine"``, ``"scaled_linear"``), a ``ScheduleSpec`` or its dict
      (betas, T, or an ``alphas_cumprod`` table), or a ``DiscreteSchedule``.

    ``cond`` is None or a ``hetdiff.conditioning.Conditioning`` (class labels, text tokens).

    Returns:
        A ``VelocityModel``, ``forward(x, t, cond) -> v``, refusing t outside ``.t_range``
            (``(0, 1)`` for flow, the schedule's covered range for DDPM).
    """
    from hetdiff.objectives.kinds import resolve_objective

    name = schedule if isinstance(schedule, str) or schedule is None else "linear"
    objective, prediction, name = resolve_objective(objective, prediction, name, learned_variance)
    table = None
    if isinstance(schedule, DiscreteSchedule):
        table = schedule
    elif name is not None:  # ddpm: a name, a ScheduleSpec or its dict
        table = make_schedule(name if schedule is None else schedule)
    return make_velocity_model(net, objective, prediction, table, learned_variance, time_scale)


class UniformRouter(nn.Module):
    """Equal weights for ``num_clusters`` experts: logits (B, K) of zeros, any x, t, cond."""

    def __init__(self, num_clusters: int) -> None:
        super().__init__()
        self.num_clusters = int(num_clusters)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return x.new_zeros(x.shape[0], self.num_clusters)


def make_ensemble(
    experts: Sequence[VelocityModel],
    router: str | Path | Callable[[Tensor, Tensor, Any], Tensor] | None = None,
    *,
    cluster_ids: Sequence[int] | None = None,
    num_clusters: int | None = None,
    strategy: str = "full",
    top_k: int = 2,
    top_p: float = TOP_P,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Ensemble:
    """Compose velocity models (loaded, wrapped with ``velocity_expert``, or both) into one.

    Args:
        experts: K' velocity models; they may differ in objective, schedule and size.
        router: a router checkpoint or folder (``hetdiff train-router``, ``train_router``), a
            callable ``router(x (B, C, H, W), t (B,), cond) -> logits (B, num_clusters)``, or
            None for equal weights (a ``UniformRouter``).
        cluster_ids: the cluster each expert serves (default 0..K'-1).
        num_clusters: K of the router (default: the checkpoint's, else K').
        strategy: ``"full"``, ``"top-k"``, ``"top1"``, ``"sample"`` or ``"nucleus"``, as in
            ``load_ensemble``.
        top_k: k of ``"top-k"`` (default 2).
        top_p: the weight ``"nucleus"`` keeps, in (0, 1] (default 0.9).
        seed: seeds the draws of ``"sample"`` (default 0).
        device: where a router loaded from a checkpoint goes.

    Returns:
        ``Ensemble`` valid on the intersection of the experts' t-ranges; a spec of the first
            expert that has one is kept as ``.spec``.
    """
    ids = list(range(len(experts))) if cluster_ids is None else [int(k) for k in cluster_ids]
    if router is None:
        k = num_clusters or len(ids)
        router = UniformRouter(k)
    elif isinstance(router, str | Path):
        from hetdiff.experts.router_store import load_router

        router, router_spec = load_router(router, device)
        if num_clusters not in (None, router_spec.num_clusters):
            raise HetdiffError(
                f"num_clusters={num_clusters} but the router was trained on "
                f"K={router_spec.num_clusters}; drop num_clusters"
            )
        k = router_spec.num_clusters
    else:
        k = num_clusters or len(ids)
    generator = torch.Generator().manual_seed(seed)
    ensemble = Ensemble(
        list(experts), ids, router, k, strategy=strategy, top_k=top_k, generator=generator,
        top_p=top_p,
    )  # fmt: skip
    specs = [getattr(expert, "spec", None) for expert in experts]
    ensemble.spec = next((spec for spec in specs if spec is not None), None)
    return ensemble


def with_strategy(
    ensemble: Ensemble, strategy: str, top_k: int = 2, seed: int = 0, top_p: float = TOP_P
) -> Ensemble:
    """The same experts and router under another routing ``strategy`` (no weights copied);
    ``top_k`` and ``top_p`` as in ``load_ensemble``."""
    generator = torch.Generator().manual_seed(seed)
    routed = Ensemble(
        list(ensemble.experts), ensemble.cluster_ids, ensemble.router, ensemble.num_clusters,
        strategy=strategy, top_k=top_k, allow_missing=bool(ensemble.missing_clusters),
        generator=generator, top_p=top_p,
    )  # fmt: skip
    routed.spec = getattr(ensemble, "spec", None)
    return routed
