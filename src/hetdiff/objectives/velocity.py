"""Velocity adapters: every expert, whatever its objective, becomes v(x_t, t, cond).

An adapter wraps a network ``net(x, timestep, cond) -> output`` trained with one
parameterization and exposes the flow velocity on the common axis (t = 0 data, t = 1 noise,
x_t = (1 - t) x0 + t eps, v = eps - x0). Integer DDPM steps, input scaling and learned-variance
channels exist only in here.

DDPM conversion (design.md section 2), at common time t:
    1. scale = sqrt((1 - t)^2 + t^2), alpha = (1 - t) / scale, sigma = t / scale
       (same SNR: alpha / sigma = (1 - t) / t)
    2. x_s = x_t / scale
    3. s* = schedule.step_of_t(t), fractional, from the expert's own table (log-SNR interpolation)
    4. read the output as (x0-hat, eps-hat) in the expert's parameterization
    5. v = eps-hat - x0-hat
Each adapter reports ``t_range``, the interval where it is valid; it refuses t outside it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hetdiff.errors import HetdiffError
from hetdiff.objectives.kinds import DDPM, FLOW, OBJECTIVES
from hetdiff.objectives.paths import DDPM_PREDICTIONS, ddpm_to_x0_eps, drop_learned_variance
from hetdiff.objectives.schedules import DiscreteSchedule, check_t_in_range

DEFAULT_TIME_SCALE = 1000.0  # flow networks see t * 1000, the same range as DDPM steps


class VelocityModel(nn.Module):
    """Base class: ``forward(x (B, C, H, W), t (B,) or scalar in t_range, cond) -> v (B, C, H, W)``."""

    net: nn.Module
    t_range: tuple[float, float] = (0.0, 1.0)

    def _prepare_time(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.to(x.dtype) if t.is_floating_point() else t.to(torch.get_default_dtype())
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise HetdiffError(
                f"t must be a scalar or have shape ({x.shape[0]},) to match x of shape "
                f"{tuple(x.shape)}; got shape {tuple(t.shape)}"
            )
        check_t_in_range(t, *self.t_range, what=type(self).__name__)
        return t.clamp(*self.t_range)

    def _check_output(self, out: Tensor, x: Tensor) -> Tensor:
        if out.shape != x.shape:
            raise HetdiffError(
                f"expert network returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                "check the expert's channels and learned_variance setting"
            )
        return out

    @property
    def covers_noise(self) -> bool:
        """True when the adapter is valid up to t = 1 (sampling can start from pure noise)."""
        return self.t_range[1] >= 1.0


class FlowVelocity(VelocityModel):
    """A flow-matching network already predicts v; it sees the timestep t * time_scale."""

    def __init__(self, net: nn.Module, time_scale: float = DEFAULT_TIME_SCALE) -> None:
        super().__init__()
        self.net = net
        self.time_scale = float(time_scale)
        self.t_range = (0.0, 1.0)

    def forward(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        t = self._prepare_time(x, t)
        return self._check_output(self.net(x, t * self.time_scale, cond), x)


class DDPMVelocity(VelocityModel):
    """A DDPM network (eps, x0 or v_ddpm prediction on its own discrete schedule) as a velocity.

    Args:
        net: ``net(x_s, s, cond)`` with fractional step s in [0, T-1].
        schedule: the expert's own discrete schedule.
        prediction: "eps", "x0" or "v" (v_ddpm = alpha eps - sigma x0).
        learned_variance: the network outputs 2C channels; the last C (variance) are dropped.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: DiscreteSchedule,
        prediction: str = "eps",
        learned_variance: bool = False,
    ) -> None:
        super().__init__()
        if prediction not in DDPM_PREDICTIONS:
            raise HetdiffError(
                f"unknown prediction type {prediction!r}; "
                f"choose one of {', '.join(DDPM_PREDICTIONS)}"
            )
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.learned_variance = bool(learned_variance)
        self.t_range = schedule.t_range

    def forward(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        t = self._prepare_time(x, t)
        scale = torch.sqrt((1 - t) ** 2 + t**2)  # (B,)
        alpha, sigma = (1 - t) / scale, t / scale
        x_s = x / scale.reshape(-1, *([1] * (x.ndim - 1)))
        step = self.schedule.step_of_t(t)
        out = self.net(x_s, step, cond)
        if self.learned_variance:
            out = drop_learned_variance(out, x.shape[1])
        x0, eps = ddpm_to_x0_eps(self.prediction, self._check_output(out, x), x_s, alpha, sigma)
        return eps - x0


def make_velocity_model(
    net: nn.Module,
    objective: str,
    prediction: str | None = None,
    schedule: DiscreteSchedule | None = None,
    learned_variance: bool = False,
    time_scale: float = DEFAULT_TIME_SCALE,
) -> VelocityModel:
    """Wrap ``net`` by its objective: "flow" (prediction "velocity") or "ddpm"."""
    if objective == FLOW:
        if prediction not in (None, "velocity"):
            raise HetdiffError(f"a flow expert predicts 'velocity', not {prediction!r}")
        return FlowVelocity(net, time_scale)
    if objective == DDPM:
        if schedule is None:
            raise HetdiffError("a DDPM expert needs its schedule to be converted to a velocity")
        return DDPMVelocity(net, schedule, prediction or "eps", learned_variance)
    raise HetdiffError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def common_t_range(models: list[VelocityModel]) -> tuple[float, float]:
    """The interval every model covers: [max of t_min, min of t_max]."""
    lo = max(m.t_range[0] for m in models)
    hi = min(m.t_range[1] for m in models)
    if lo >= hi:
        raise HetdiffError(
            f"the experts' valid t-ranges do not overlap (max t_min {lo} >= min t_max {hi})"
        )
    return lo, hi
