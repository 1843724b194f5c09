"""ODE solvers over a velocity function, time grids, seeded noise, and the native DDIM sampler.

Sampling integrates dx/dt = v(x, t, cond) from t = t_max (noise) down to t = 0 (data).
A grid is a 1-D float64 tensor [t_0 = t_max > t_1 > ... > t_N = 0]; N is the number of steps.
When the velocity is valid only on [t_min, t_max] (a converted DDPM expert), the grid spaces its
first N points over [t_min, t_max] and ends with one jump to 0, which Euler takes from t_min:
x_0 = x - t_min v = the expert's x0-prediction at t_min, exactly how DDIM ends.

DDIM (eta = 0) taken with x0-hat and eps-hat held fixed over a step is exactly an Euler step on
the flow path: (1 - t') x0-hat + t' eps-hat = x_t + (t' - t) v. So the native sampler and the
converted one integrate the same probability-flow ODE and agree as steps grow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hetdiff.config import SOLVERS, SPACINGS
from hetdiff.errors import HetdiffError
from hetdiff.objectives.paths import ddpm_to_x0_eps, drop_learned_variance
from hetdiff.objectives.schedules import DiscreteSchedule

VelocityFn = Callable[[Tensor, Tensor, Any], Tensor]
StepCallback = Callable[[int, Tensor, Tensor], None]  # (step index, t, x after the step)


# --------------------------------------------------------------------------------------------
# Time grids
# --------------------------------------------------------------------------------------------


def time_grid(steps: int, t_max: float = 1.0, t_min: float = 0.0, shift: float = 1.0) -> Tensor:
    """A decreasing grid of ``steps + 1`` times from ``t_max`` to 0, float64.

    u runs uniformly from 1 to 0; ``shift`` > 1 moves points toward high noise (SD3's
    t = shift u / (1 + (shift - 1) u)); shift = 1 is uniform in t. With ``t_min`` > 0 the first
    ``steps`` points are mapped into [t_min, t_max] and the last is 0.
    """
    if int(steps) != steps or steps < 1:
        raise HetdiffError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise HetdiffError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if shift <= 0:
        raise HetdiffError(f"shift must be > 0, got {shift}")
    n_inner = steps + 1 if t_min == 0.0 else steps
    u = torch.linspace(1.0, 0.0, n_inner, dtype=torch.float64)
    warped = shift * u / (1 + (shift - 1) * u)
    grid = t_min + (t_max - t_min) * warped
    if t_min > 0.0:
        grid = torch.cat([grid, torch.zeros(1, dtype=torch.float64)])
    grid[-1] = 0.0
    return grid


# --------------------------------------------------------------------------------------------
# Noise: one seed, one image
# --------------------------------------------------------------------------------------------


def seeded_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise (len(seeds), *shape), row i drawn from its own generator seeded by
    ``seeds[i]`` on the CPU, so an image depends on its seed alone, not on batch size, device or
    whatever else ran before."""
    rows = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        rows.append(torch.randn(*shape, generator=gen, dtype=torch.float64))
    return torch.stack(rows).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Velocity solvers
# --------------------------------------------------------------------------------------------


def _t_batch(t: Tensor, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


@torch.no_grad()
def sample_euler(
    velocity: VelocityFn,
    x: Tensor,
    grid: Tensor,
    cond: Any = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Euler: x <- x + (t_next - t) v(x, t). ``x`` is the state at grid[0]."""
    for i in range(len(grid) - 1):
        t, t_next = grid[i], grid[i + 1]
        x = x + (t_next - t).item() * velocity(x, _t_batch(t, x), cond)
        if callback is not None:
            callback(i, t_next, x)
    return x


@torch.no_grad()
def sample_heun(
    velocity: VelocityFn,
    x: Tensor,
    grid: Tensor,
    cond: Any = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Heun (trapezoidal predictor-corrector): second order; the final step to t = 0 is Euler,
    as in EDM, so v is never evaluated at t = 0. Costs 2 evaluations per step but the last."""
    for i in range(len(grid) - 1):
        t, t_next = grid[i], grid[i + 1]
        dt = (t_next - t).item()
        v = velocity(x, _t_batch(t, x), cond)
        x_pred = x + dt * v
        if t_next > 0:
            v_next = velocity(x_pred, _t_batch(t_next, x), cond)
            x = x + dt * 0.5 * (v + v_next)
        else:
            x = x_pred
        if callback is not None:
            callback(i, t_next, x)
    return x


def get_solver(name: str) -> Callable[..., Tensor]:
    """Look a solver up by name ("euler" or "heun")."""
    solvers = {"euler": sample_euler, "heun": sample_heun}
    if name not in solvers:
        raise HetdiffError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return solvers[name]


def solve(
    velocity: VelocityFn,
    noise: Tensor,
    steps: int,
    t_range: tuple[float, float] = (0.0, 1.0),
    solver: str = "euler",
    shift: float = 1.0,
    cond: Any = None,
    callback: StepCallback | None = None,
    grid: Tensor | None = None,
) -> Tensor:
    """Sample from standard normal ``noise``: start at x = t_max * noise (the flow path's marginal
    scale at t_max, up to the negligible data term) and integrate to t = 0 on ``time_grid``, or
    on ``grid`` (a model's own decreasing grid ending at 0, e.g. diffusers' flow sigmas)."""
    t_min, t_max = t_range
    if grid is None:
        grid = time_grid(steps, t_max=t_max, t_min=t_min, shift=shift)
    else:
        t_max = float(grid[0])
    return get_solver(solver)(velocity, noise * t_max, grid, cond, callback)


# --------------------------------------------------------------------------------------------
# Native DDIM (eta = 0): the reference the conversion is checked against
# --------------------------------------------------------------------------------------------


def ddim_timesteps(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Integer steps from T-1 down to 0 ("trailing"/linspace spacing), int64, length steps."""
    top = schedule.num_train_timesteps - 1
    if int(steps) != steps or not 1 <= steps <= top + 1:
        raise HetdiffError(f"DDIM steps must be an integer in [1, {top + 1}], got {steps!r}")
    return torch.linspace(top, 0, int(steps), dtype=torch.float64).round().long()


@torch.no_grad()
def sample_ddim(
    net: Callable[[Tensor, Tensor, Any], Tensor],
    schedule: DiscreteSchedule,
    prediction: str,
    x: Tensor,
    timesteps: Tensor,
    cond: Any = None,
    learned_variance: bool = False,
) -> Tensor:
    """DDIM with eta = 0 in the expert's own space: x is x_s at timesteps[0] (pure noise for
    s = T-1); each step x_{s'} = alpha_{s'} x0-hat + sigma_{s'} eps-hat; the last step returns
    x0-hat at timesteps[-1]."""
    channels = x.shape[1]
    for i, s in enumerate(timesteps.tolist()):
        s_batch = torch.full((x.shape[0],), float(s), dtype=x.dtype, device=x.device)
        alpha, sigma = schedule.alpha_sigma(s_batch)
        out = net(x, s_batch, cond)
        if learned_variance:
            out = drop_learned_variance(out, channels)
        x0, eps = ddpm_to_x0_eps(prediction, out, x, alpha.to(x.dtype), sigma.to(x.dtype))
        if i + 1 == len(timesteps):
            return x0
        a_next, s_next = schedule.alpha_sigma(
            torch.full_like(s_batch, float(timesteps[i + 1].item()))
        )
        shape = (-1, *([1] * (x.ndim - 1)))
        x = a_next.to(x.dtype).reshape(shape) * x0 + s_next.to(x.dtype).reshape(shape) * eps
    return x


# --------------------------------------------------------------------------------------------
# DDIM with diffusers' semantics (DDIMScheduler.set_timesteps / step, eta = 0)
# --------------------------------------------------------------------------------------------


def spaced_timesteps(
    num_train_timesteps: int, steps: int, spacing: str, steps_offset: int = 0
) -> Tensor:
    """diffusers' ``DDIMScheduler.set_timesteps`` list (int64, decreasing, ``steps`` long):

        linspace  round(linspace(0, T - 1, N))[::-1]
        leading   arange(N) * (T // N), reversed, + steps_offset
        trailing  round(arange(T, 0, -T / N)) - 1

    (numpy's round-half-to-even, as diffusers computes it)."""
    T = int(num_train_timesteps)
    if spacing not in SPACINGS:
        raise HetdiffError(
            f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}"
        )
    if int(steps) != steps or not 1 <= steps <= T:
        raise HetdiffError(f"DDIM steps must be an integer in [1, {T}], got {steps!r}")
    if spacing == "linspace":
        timesteps = np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        timesteps = (np.arange(0, steps) * (T // steps)).round()[::-1].astype(np.int64)
        timesteps = timesteps + int(steps_offset)
    else:
        timesteps = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    if timesteps.max() > T - 1 or timesteps.min() < 0:
        raise HetdiffError(
            f"{spacing} spacing with steps_offset {steps_offset} gives step {timesteps.max()} "
            f"outside [0, {T - 1}]; lower steps_offset"
        )
    return torch.from_numpy(timesteps.copy())


@torch.no_grad()
def sample_ddim_spaced(
    net: Callable[[Tensor, Tensor, Any], Tensor],
    schedule: DiscreteSchedule,
    prediction: str,
    x: Tensor,
    steps: int,
    spacing: str,
    cond: Any = None,
    learned_variance: bool = False,
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    clip_sample_range: float | None = None,
) -> Tensor:
    """DDIM (eta = 0) stepping to diffusers' targets: at each s of ``spaced_timesteps`` the
    previous step is s' = s - T // N (``DDIMScheduler.step``), abar_{s'} from the table, or
    1 (``set_alpha_to_one``) / abar_0 once s' < 0, and

        x0-hat, eps-hat = the net's output read at abar_s (clamped to +-clip_sample_range)
        x <- sqrt(abar_{s'}) x0-hat + sqrt(1 - abar_{s'}) eps-hat

    ``x`` is x_s at the first timestep (pure noise); returns the state after the last step."""
    T = schedule.num_train_timesteps
    timesteps = spaced_timesteps(T, steps, spacing, steps_offset)
    abar = schedule.alphas_cumprod.to(x.device)
    final = torch.ones((), dtype=abar.dtype, device=x.device) if set_alpha_to_one else abar[0]
    jump, channels = T // int(steps), x.shape[1]
    for s in timesteps.tolist():
        a_t = abar[s].to(x.dtype)
        a_prev = (abar[s - jump] if s - jump >= 0 else final).to(x.dtype)
        out = net(x, torch.full((x.shape[0],), float(s), dtype=x.dtype, device=x.device), cond)
        if learned_variance:
            out = drop_learned_variance(out, channels)
        x0, eps = ddpm_to_x0_eps(prediction, out, x, a_t.sqrt(), (1 - a_t).sqrt())
        if clip_sample_range is not None:
            x0 = x0.clamp(-clip_sample_range, clip_sample_range)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x
