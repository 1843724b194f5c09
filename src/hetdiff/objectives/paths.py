"""Named conversions between parameterizations at one point of a diffusion path.

Flow path (common axis): x_t = (1 - t) x0 + t eps, velocity v = eps - x0. At one (x_t, t):

    x0  = x_t - t v                 eps = x_t + (1 - t) v
    v   = (eps - x_t) / (1 - t)     v   = (x_t - x0) / t

DDPM path: x_s = alpha x0 + sigma eps with alpha^2 + sigma^2 = 1 and the DDPM "v" target
v_ddpm = alpha eps - sigma x0 (Salimans & Ho), which is NOT the flow velocity.

Every function broadcasts a (B,) time or coefficient over the trailing dims of x.
"""

from __future__ import annotations

from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.objectives.schedules import expand_time

DDPM_PREDICTIONS = ("eps", "x0", "v")


def flow_interpolate(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """The point of the flow path: x_t = (1 - t) x0 + t eps, with (B,) or scalar t."""
    tb = expand_time(t, x0)
    return (1 - tb) * x0 + tb * eps


def flow_velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The flow-matching regression target v = eps - x0 (independent of t)."""
    return eps - x0


def drop_learned_variance(output: Tensor, channels: int) -> Tensor:
    """The mean channels of a DDPM output that carries learned-variance channels: (B, 2C, ...)
    -> (B, C, ...); one-line error when the output does not have 2C channels."""
    if output.shape[1] != 2 * channels:
        raise HetdiffError(
            f"a learned-variance expert must output {2 * channels} channels, got {output.shape[1]}"
        )
    return output[:, :channels]


def x0_from_velocity(x_t: Tensor, t: Tensor, velocity: Tensor) -> Tensor:
    """x0 = x_t - t v."""
    return x_t - expand_time(t, x_t) * velocity


def eps_from_velocity(x_t: Tensor, t: Tensor, velocity: Tensor) -> Tensor:
    """eps = x_t + (1 - t) v."""
    return x_t + (1 - expand_time(t, x_t)) * velocity


def velocity_from_eps(x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """v = (eps - x_t) / (1 - t); undefined at t = 1."""
    return (eps - x_t) / (1 - expand_time(t, x_t))


def velocity_from_x0(x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """v = (x_t - x0) / t; undefined at t = 0."""
    return (x_t - x0) / expand_time(t, x_t)


def ddpm_to_x0_eps(
    prediction: str, output: Tensor, x_s: Tensor, alpha: Tensor, sigma: Tensor
) -> tuple[Tensor, Tensor]:
    """Read a DDPM network output in its own parameterization as (x0-hat, eps-hat).

    eps: eps = out,                     x0 = (x_s - sigma eps) / alpha
    x0:  x0 = out,                      eps = (x_s - alpha x0) / sigma
    v:   x0 = alpha x_s - sigma v_ddpm, eps = sigma x_s + alpha v_ddpm
    """
    a, s = expand_time(alpha, x_s), expand_time(sigma, x_s)
    if prediction == "eps":
        return (x_s - s * output) / a, output
    if prediction == "x0":
        return output, (x_s - a * output) / s
    if prediction == "v":
        return a * x_s - s * output, s * x_s + a * output
    raise HetdiffError(
        f"unknown prediction type {prediction!r}; choose one of {', '.join(DDPM_PREDICTIONS)}"
    )


def ddpm_target(prediction: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The DDPM regression target: eps, x0, or v_ddpm = alpha eps - sigma x0."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return expand_time(alpha, x0) * eps - expand_time(sigma, x0) * x0
    raise HetdiffError(
        f"unknown prediction type {prediction!r}; choose one of {', '.join(DDPM_PREDICTIONS)}"
    )
