"""Training losses as small functions; each returns one loss per sample, shape (B,).

All randomness (noise, times, label dropout) comes from the ``generator`` the training loop owns,
so a resumed run draws exactly what an uninterrupted one would.

DDPM (any discrete schedule): s ~ U{0..T-1}, x_s = alpha_s x0 + sigma_s eps,
    loss = mean over dims of |net(x_s, s, cond) - target|^2, target in {eps, x0, v_ddpm},
    optionally times the min-SNR-gamma weight of step s (``min_snr_weight``).
Flow matching: t ~ p(t), x_t = (1 - t) x0 + t eps,
    loss = mean over dims of |v(x_t, t, cond) - (eps - x0)|^2,
with v any velocity model (a native flow net, or a DDPM net behind its adapter: a warm start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hetdiff.errors import HetdiffError
from hetdiff.objectives.kinds import (
    DDPM,
    FLOW,
    check_objective_name,
    default_prediction,
    uses_schedule,
)
from hetdiff.objectives.paths import (
    DDPM_PREDICTIONS,
    ddpm_target,
    drop_learned_variance,
    flow_interpolate,
    flow_velocity_target,
)
from hetdiff.objectives.schedules import DiscreteSchedule, expand_time
from hetdiff.objectives.velocity import FlowVelocity, VelocityModel

TIME_SAMPLINGS = ("uniform", "logit_normal")
LossFn = Callable[[nn.Module, Tensor, "Tensor | None", torch.Generator], Tensor]


def _per_sample_mse(prediction: Tensor, target: Tensor) -> Tensor:
    return ((prediction.float() - target.float()) ** 2).flatten(1).mean(dim=1)


def sample_flow_times(
    n: int,
    generator: torch.Generator,
    device: torch.device | str,
    sampling: str = "uniform",
    t_range: tuple[float, float] = (0.0, 1.0),
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> Tensor:
    """Times for flow training, shape (n,), in ``t_range``.

    uniform: t ~ U(t_min, t_max). logit_normal (SD3): t = sigmoid(m + s z), z ~ N(0, 1), then
    mapped affinely into t_range.
    """
    if sampling == "uniform":
        u = torch.rand(n, generator=generator, device=device)
    elif sampling == "logit_normal":
        z = torch.randn(n, generator=generator, device=device)
        u = torch.sigmoid(logit_mean + logit_std * z)
    else:
        raise HetdiffError(
            f"unknown time sampling {sampling!r}; choose one of {', '.join(TIME_SAMPLINGS)}"
        )
    lo, hi = t_range
    return lo + (hi - lo) * u


def min_snr_weight(snr: Tensor, prediction: str, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), same shape as ``snr`` (SNR_s =
    alpha_s^2 / sigma_s^2 >= 0 of the sampled steps).

    The x0-loss weight min(SNR, gamma), expressed for the network's target:
        eps: min(SNR, gamma) / SNR = min(1, gamma / SNR)     (1 where SNR <= gamma, also SNR = 0)
        x0:  min(SNR, gamma)
        v:   min(SNR, gamma) / (SNR + 1)
    """
    if prediction not in DDPM_PREDICTIONS:
        raise HetdiffError(
            f"unknown prediction type {prediction!r}; choose one of {', '.join(DDPM_PREDICTIONS)}"
        )
    if not gamma > 0:
        raise HetdiffError(f"min_snr_gamma must be > 0, got {gamma!r}")
    if prediction == "eps":
        return torch.clamp(gamma / snr, max=1.0)
    clipped = torch.clamp(snr, max=gamma)
    return clipped if prediction == "x0" else clipped / (snr + 1)


def ddpm_loss(
    net: nn.Module,
    x0: Tensor,
    schedule: DiscreteSchedule,
    prediction: str,
    generator: torch.Generator,
    cond: Any = None,
    learned_variance: bool = False,
    min_snr_gamma: float | None = None,
) -> Tensor:
    """Per-sample DDPM loss at integer steps of ``schedule``; only the mean channels are trained
    (learned-variance channels, when present, are ignored by the loss). ``min_snr_gamma``
    multiplies each sample's loss by ``min_snr_weight`` of its step's SNR (computed in float64
    from the schedule's table); None leaves the loss unweighted (the same draws either way)."""
    if prediction not in DDPM_PREDICTIONS:
        raise HetdiffError(
            f"unknown prediction type {prediction!r}; choose one of {', '.join(DDPM_PREDICTIONS)}"
        )
    n, device = x0.shape[0], x0.device
    steps = torch.randint(0, schedule.num_train_timesteps, (n,), generator=generator, device=device)
    eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
    alpha, sigma = schedule.alpha_sigma(steps.to(torch.float64))
    alpha, sigma = alpha.to(device=device, dtype=x0.dtype), sigma.to(device=device, dtype=x0.dtype)
    x_s = expand_time(alpha, x0) * x0 + expand_time(sigma, x0) * eps
    out = net(x_s, steps.to(x0.dtype), cond)
    if learned_variance:
        out = drop_learned_variance(out, x0.shape[1])
    loss = _per_sample_mse(out, ddpm_target(prediction, x0, eps, alpha, sigma))
    if min_snr_gamma is None:
        return loss
    snr = schedule.log_snr(steps.to(torch.float64)).exp()  # alpha_s^2 / sigma_s^2, float64
    weight = min_snr_weight(snr, prediction, min_snr_gamma)
    return loss * weight.to(device=loss.device, dtype=loss.dtype)


def flow_loss(
    velocity: VelocityModel,
    x0: Tensor,
    generator: torch.Generator,
    cond: Any = None,
    time_sampling: str = "uniform",
) -> Tensor:
    """Per-sample flow-matching loss |v(x_t, t) - (eps - x0)|^2 with t drawn inside the velocity
    model's valid range."""
    n, device = x0.shape[0], x0.device
    t = sample_flow_times(n, generator, device, time_sampling, velocity.t_range).to(x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
    x_t = flow_interpolate(x0, eps, t)
    return _per_sample_mse(velocity(x_t, t, cond), flow_velocity_target(x0, eps))


def make_loss_fn(
    objective: str = FLOW,
    prediction: str | None = None,
    schedule: DiscreteSchedule | None = None,
    time_sampling: str = "uniform",
    label_dropout: float = 0.1,
    learned_variance: bool = False,
    wrap: Callable[[nn.Module], VelocityModel] | None = None,
    min_snr_gamma: float | None = None,
) -> LossFn:
    """A ``loss_fn(model, x0, labels, generator) -> (B,)`` for the training loop; the one place
    that picks the loss by objective.

    ddpm: ``ddpm_loss`` on ``schedule`` with target ``prediction`` (default eps); the
    learned-variance channels, when present, are not trained; ``min_snr_gamma`` weights each
    sample by ``min_snr_weight`` (ddpm only: a flow objective refuses it). flow: ``flow_loss`` on the
    velocity ``wrap(model)`` (a FlowVelocity for a native flow net, a DDPMVelocity for a
    converted DDPM net; default FlowVelocity) with t ~ ``time_sampling``. Class labels are
    replaced by the null class (-1) with probability ``label_dropout``, drawn from the generator.
    """
    from hetdiff.conditioning import drop_labels

    objective = check_objective_name(objective)
    prediction = prediction or default_prediction(objective)
    if uses_schedule(objective) and schedule is None:
        raise HetdiffError("a DDPM objective needs a schedule")
    if min_snr_gamma is not None and not uses_schedule(objective):
        raise HetdiffError("min_snr_gamma weights the DDPM loss; a flow objective takes none")

    def loss_fn(
        model: nn.Module, x0: Tensor, labels: Tensor | None, gen: torch.Generator
    ) -> Tensor:
        cond = None
        if labels is not None:
            cond = drop_labels(labels, label_dropout, gen)
        if objective == DDPM:
            return ddpm_loss(
                model, x0, schedule, prediction, gen, cond, learned_variance, min_snr_gamma
            )
        velocity = wrap(model) if wrap is not None else FlowVelocity(model)
        return flow_loss(velocity, x0, gen, cond, time_sampling)

    return loss_fn
