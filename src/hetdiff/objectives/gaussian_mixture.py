"""Closed-form denoisers for isotropic Gaussian-mixture data: the exact reference models.

Data x0 ~ sum_j w_j N(mu_j, s_j^2 I) in d dimensions. On any path x = a x0 + b eps
(flow: a = 1 - t, b = t; DDPM: a = alpha_s, b = sigma_s), per component j

    x | j ~ N(a mu_j, V_j I),  V_j = a^2 s_j^2 + b^2
    E[x0 | x, j]  = mu_j + a s_j^2 / V_j (x - a mu_j)
    E[eps | x, j] = b / V_j (x - a mu_j)

and the posterior over components is r_j(x) proportional to w_j N(x; a mu_j, V_j I). The exact
velocity is E[eps | x_t] - E[x0 | x_t]. These give the Bayes-optimal eps-, x0-, v_ddpm- and flow
models of any schedule, and the Bayes router (r_j is the cluster posterior when each component is a
cluster). Used to check the adapters, solvers and ensemble to float64 rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from hetdiff.objectives.paths import ddpm_target
from hetdiff.objectives.schedules import DiscreteSchedule


class GaussianMixture:
    """An isotropic Gaussian mixture over flattened data of ``shape`` (e.g. (C, H, W)).

    Args:
        means: (J, D) component means, D = prod(shape).
        stds: (J,) per-component standard deviations.
        weights: (J,) mixture weights (normalized here).
        shape: the per-sample data shape; defaults to (D,).
    """

    def __init__(
        self, means: Tensor, stds: Tensor, weights: Tensor, shape: tuple[int, ...] | None = None
    ) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.shape = tuple(shape) if shape is not None else (self.means.shape[1],)
        assert math.prod(self.shape) == self.means.shape[1]

    def component(self, j: int) -> GaussianMixture:
        """The mixture restricted to component j (a one-component mixture)."""
        return GaussianMixture(
            self.means[j : j + 1], self.stds[j : j + 1], torch.ones(1), self.shape
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw n samples; returns (x0 of shape (n, *shape), component ids (n,))."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x0 = self.means[comp] + self.stds[comp, None] * noise
        return x0.reshape(n, *self.shape), comp

    # -- posterior quantities on a path x = a x0 + b eps ------------------------------------------

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).to(torch.float64)

    def responsibilities(self, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """r (B, J): posterior over components given x = a x0 + b eps, a and b of shape (B,)."""
        xf = self._flat(x)
        a64, b64 = a.to(torch.float64)[:, None], b.to(torch.float64)[:, None]
        var = a64**2 * self.stds[None] ** 2 + b64**2  # (B, J)
        d = xf.shape[1]
        diff = xf[:, None, :] - a64[:, :, None] * self.means[None]  # (B, J, D)
        sq = (diff**2).sum(-1)
        log_p = (
            torch.log(self.weights)[None] - 0.5 * d * torch.log(2 * math.pi * var) - 0.5 * sq / var
        )
        return torch.softmax(log_p, dim=1)

    def posterior_means(self, x: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """(E[x0 | x], E[eps | x]) each shaped like x, float64."""
        xf = self._flat(x)
        a64, b64 = a.to(torch.float64)[:, None], b.to(torch.float64)[:, None]
        var = a64**2 * self.stds[None] ** 2 + b64**2  # (B, J)
        r = self.responsibilities(x, a, b)  # (B, J)
        diff = xf[:, None, :] - a64[:, :, None] * self.means[None]  # (B, J, D)
        x0_j = self.means[None] + (a64 * self.stds[None] ** 2 / var)[..., None] * diff
        eps_j = (b64 / var)[..., None] * diff
        x0 = (r[..., None] * x0_j).sum(1)
        eps = (r[..., None] * eps_j).sum(1)
        return x0.reshape(x.shape), eps.reshape(x.shape)

    # -- the common axis -----------------------------------------------------------------------

    def flow_posterior(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(E[x0 | x_t], E[eps | x_t]) on the flow path at t (B,)."""
        t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
        return self.posterior_means(x_t, 1 - t, t)

    def velocity(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The exact flow velocity E[eps - x0 | x_t] at t (B,)."""
        x0, eps = self.flow_posterior(x_t, t)
        return eps - x0

    def flow_responsibilities(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The Bayes router p(component | x_t, t), shape (B, J)."""
        t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
        return self.responsibilities(x_t, 1 - t, t)

    # -- exact networks ------------------------------------------------------------------------

    def flow_net(self, time_scale: float = 1000.0) -> nn.Module:
        """An exact flow network: net(x, t * time_scale, cond) = v(x, t)."""
        return _ExactFlowNet(self, time_scale)

    def ddpm_net(
        self, schedule: DiscreteSchedule, prediction: str, learned_variance: bool = False
    ) -> nn.Module:
        """An exact DDPM network on ``schedule``: net(x_s, s, cond) = E[target | x_s] at
        fractional step s (alpha_s, sigma_s from the schedule's log-SNR interpolation).
        With ``learned_variance`` it appends C junk channels the adapter must drop."""
        return _ExactDDPMNet(self, schedule, prediction, learned_variance)


class _ExactFlowNet(nn.Module):
    def __init__(self, mixture: GaussianMixture, time_scale: float) -> None:
        super().__init__()
        self.mixture, self.time_scale = mixture, time_scale

    def forward(self, x: Tensor, timestep: Tensor, cond: Any = None) -> Tensor:
        return self.mixture.velocity(x, timestep.to(torch.float64) / self.time_scale).to(x.dtype)


class _ExactDDPMNet(nn.Module):
    def __init__(
        self, mixture: GaussianMixture, schedule: DiscreteSchedule, prediction: str, junk: bool
    ) -> None:
        super().__init__()
        self.mixture, self.schedule, self.prediction, self.junk = (
            mixture,
            schedule,
            prediction,
            junk,
        )
        self.calls = 0

    def forward(self, x: Tensor, timestep: Tensor, cond: Any = None) -> Tensor:
        self.calls += 1
        alpha, sigma = self.schedule.alpha_sigma(timestep.to(torch.float64))
        x0, eps = self.mixture.posterior_means(x, alpha, sigma)
        out = ddpm_target(self.prediction, x0, eps, alpha, sigma).to(x.dtype)
        if self.junk:
            out = torch.cat([out, torch.full_like(out, 123.0)], dim=1)
        return out
