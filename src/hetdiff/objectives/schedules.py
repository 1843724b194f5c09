"""Noise schedules and the map between each schedule's own timesteps and the common t axis.

Common axis: t in [0, 1], t = 0 data, t = 1 noise, the flow path x_t = (1 - t) x0 + t eps,
whose signal-to-noise ratio is SNR(t) = ((1 - t) / t)^2.

A discrete DDPM schedule has integer steps s = 0..T-1 with x_s = alpha_s x0 + sigma_s eps,
alpha_s = sqrt(abar_s), sigma_s = sqrt(1 - abar_s). Matching signal-to-noise,

    lambda(s) = log(abar_s / (1 - abar_s)) = 2 log(alpha_s / sigma_s)
    t(s)      = sigma_s / (alpha_s + sigma_s)            (SNR(t) = SNR_s)
    abar(t)   = (1 - t)^2 / ((1 - t)^2 + t^2)

Between integer steps the schedule is interpolated linearly in log-SNR over the expert's own
table, so a fractional step s* with lambda(s*) = lambda(t) exists for every t in the range the
table covers, [t(0), t(T-1)], and equals the integer step exactly at the knots.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from hetdiff.errors import HetdiffError

SCHEDULE_NAMES = ("linear", "cosine", "scaled_linear", "table")

# Defaults per schedule family: (beta_start, beta_end). DDPM (Ho et al.) uses 1e-4..0.02 for
# "linear"; Stable Diffusion's "scaled_linear" uses 0.00085..0.012 (linear in sqrt(beta)).
_BETA_DEFAULTS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}
_COSINE_OFFSET = 0.008  # Nichol & Dhariwal's s
_MAX_BETA = 0.999


@dataclass(frozen=True)
class ScheduleSpec:
    """A DDPM schedule described by name; ``alphas_cumprod`` is used only by ``"table"``.

    ``beta_start``/``beta_end`` of ``None`` take the family's default (see ``_BETA_DEFAULTS``).
    """

    name: str = "linear"
    num_train_timesteps: int = 1000
    beta_start: float | None = None
    beta_end: float | None = None
    alphas_cumprod: tuple[float, ...] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["alphas_cumprod"] is not None:
            d["alphas_cumprod"] = list(d["alphas_cumprod"])
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleSpec:
        known = {"name", "num_train_timesteps", "beta_start", "beta_end", "alphas_cumprod"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HetdiffError(
                f"unknown schedule field(s) {unknown}; valid fields are {sorted(known)}"
            )
        d = dict(d)
        if d.get("alphas_cumprod") is not None:
            d["alphas_cumprod"] = tuple(float(a) for a in d["alphas_cumprod"])
            d.setdefault("name", "table")
            d.setdefault("num_train_timesteps", len(d["alphas_cumprod"]))
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Building alphas_cumprod tables (float64)
# --------------------------------------------------------------------------------------------


def linear_betas(num_steps: int, beta_start: float, beta_end: float) -> Tensor:
    """beta_s = beta_start + (beta_end - beta_start) s / (T - 1). Shape (T,), float64."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def scaled_linear_betas(num_steps: int, beta_start: float, beta_end: float) -> Tensor:
    """beta_s linear in sqrt(beta) (Stable Diffusion). Shape (T,), float64."""
    root = torch.linspace(
        math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=torch.float64
    )
    return root**2


def cosine_betas(
    num_steps: int, offset: float = _COSINE_OFFSET, max_beta: float = _MAX_BETA
) -> Tensor:
    """Nichol & Dhariwal: beta_s = min(1 - f((s+1)/T) / f(s/T), max_beta),
    f(u) = cos((u + offset) / (1 + offset) * pi / 2)^2. Shape (T,), float64."""
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], max=max_beta)


def alphas_cumprod_from_betas(betas: Tensor) -> Tensor:
    """abar_s = prod_{i <= s} (1 - beta_i). Shape (T,), float64."""
    return torch.cumprod(1 - betas.to(torch.float64), dim=0)


# --------------------------------------------------------------------------------------------
# The discrete schedule
# --------------------------------------------------------------------------------------------


class DiscreteSchedule:
    """A DDPM schedule over integer steps s = 0..T-1, with fractional steps in log-SNR.

    Args:
        alphas_cumprod: (T,) table, strictly decreasing, every value in (0, 1).
        spec: the description it was built from (stored in expert checkpoints).

    All tables are float64; query results come back in the dtype of the query tensor.
    """

    def __init__(self, alphas_cumprod: Tensor, spec: ScheduleSpec | None = None) -> None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 2:
            raise HetdiffError(f"alphas_cumprod needs at least 2 entries, got {abar.numel()}")
        if not torch.isfinite(abar).all() or (abar <= 0).any() or (abar >= 1).any():
            bad = abar[~(torch.isfinite(abar) & (abar > 0) & (abar < 1))][0].item()
            raise HetdiffError(
                f"alphas_cumprod values must lie strictly inside (0, 1); found {bad!r}"
            )
        diffs = abar[1:] - abar[:-1]
        if (diffs >= 0).any():
            s = int(torch.nonzero(diffs >= 0)[0].item())
            raise HetdiffError(
                f"alphas_cumprod must be strictly decreasing; step {s + 1} has "
                f"{abar[s + 1].item():.6g} >= step {s} value {abar[s].item():.6g}"
            )
        self.alphas_cumprod = abar
        self.log_snr_table = torch.log(abar) - torch.log1p(-abar)  # (T,), decreasing
        self.spec = spec or ScheduleSpec(
            name="table", num_train_timesteps=abar.numel(), alphas_cumprod=tuple(abar.tolist())
        )

    # -- basic facts -------------------------------------------------------------------------

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def t_range(self) -> tuple[float, float]:
        """The common-axis interval [t(0), t(T-1)] this schedule covers."""
        lam = self.log_snr_table[[0, -1]]
        t = torch.sigmoid(-lam / 2)  # t = sigma / (alpha + sigma) = 1 / (1 + exp(lambda / 2))
        return float(t[0]), float(t[1])

    def __repr__(self) -> str:
        lo, hi = self.t_range
        return (
            f"DiscreteSchedule({self.spec.name}, T={self.num_train_timesteps}, "
            f"t in [{lo:.4f}, {hi:.4f}])"
        )

    # -- queries at fractional steps ----------------------------------------------------------

    def log_snr(self, s: Tensor) -> Tensor:
        """lambda(s), linear interpolation of the table in s. s: any shape, in [0, T-1]."""
        s64 = torch.as_tensor(s).to(torch.float64)
        self._check_steps(s64)
        lo = torch.clamp(torch.floor(s64), 0, self.num_train_timesteps - 2).long()
        frac = s64 - lo
        table = self.log_snr_table.to(s64.device)
        lam = table[lo] + frac * (table[lo + 1] - table[lo])
        return lam.to(_float_dtype(s))

    def alpha_bar(self, s: Tensor) -> Tensor:
        """abar(s) = sigmoid(lambda(s)); equals the table at integer s."""
        return torch.sigmoid(self.log_snr(s))

    def alpha_sigma(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_s, sigma_s) = (sqrt(abar), sqrt(1 - abar)) at fractional steps."""
        lam = self.log_snr(s)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def t_of_step(self, s: Tensor) -> Tensor:
        """Common-axis time with the same SNR: t = sigma / (alpha + sigma) = sigmoid(-lambda/2)."""
        return torch.sigmoid(-self.log_snr(s) / 2)

    def step_of_t(self, t: Tensor) -> Tensor:
        """Fractional step s* with lambda(s*) = lambda_flow(t) = 2 log((1 - t) / t).

        Exact at table knots, monotone (increasing in t) between them. Raises HetdiffError for t
        outside ``t_range`` (beyond a 1e-9 rounding margin, which is clamped).
        """
        t64 = torch.as_tensor(t).to(torch.float64)
        lo_t, hi_t = self.t_range
        # a range end rounded to the query's precision may fall just outside: allow that rounding
        tol = max(1e-9, 4 * torch.finfo(_float_dtype(t)).eps)
        check_t_in_range(t64, lo_t, hi_t, what=repr(self), tol=tol)
        t64 = t64.clamp(lo_t, hi_t)
        lam = 2 * (torch.log1p(-t64) - torch.log(t64))
        # The table decreases in s; search the increasing negated table.
        neg = (-self.log_snr_table).to(t64.device).contiguous()
        idx = torch.searchsorted(neg, (-lam).contiguous().flatten()).reshape(lam.shape)
        hi = idx.clamp(1, self.num_train_timesteps - 1)
        lo = hi - 1
        lam_lo, lam_hi = (
            self.log_snr_table.to(t64.device)[lo],
            self.log_snr_table.to(t64.device)[hi],
        )
        frac = ((lam_lo - lam) / (lam_lo - lam_hi)).clamp(0.0, 1.0)
        return (lo.to(torch.float64) + frac).to(_float_dtype(t))

    def _check_steps(self, s: Tensor) -> None:
        top = self.num_train_timesteps - 1
        if s.numel() and (s.min() < -1e-9 or s.max() > top + 1e-9 or not torch.isfinite(s).all()):
            bad = s[(s < -1e-9) | (s > top + 1e-9) | ~torch.isfinite(s)].flatten()[0].item()
            raise HetdiffError(f"DDPM step {bad!r} is outside [0, {top}] of {self!r}")


# --------------------------------------------------------------------------------------------
# Construction from a spec
# --------------------------------------------------------------------------------------------


def make_schedule(spec: ScheduleSpec | dict[str, Any] | str) -> DiscreteSchedule:
    """Build a DiscreteSchedule from a spec, a spec dict, or a schedule name."""
    if isinstance(spec, str):
        spec = ScheduleSpec(name=spec)
    elif isinstance(spec, dict):
        spec = ScheduleSpec.from_dict(spec)
    if spec.name not in SCHEDULE_NAMES:
        raise HetdiffError(
            f"unknown schedule {spec.name!r}; choose one of {', '.join(SCHEDULE_NAMES)}"
        )
    steps = int(spec.num_train_timesteps)
    if spec.name == "table":
        if spec.alphas_cumprod is None:
            raise HetdiffError(
                "schedule 'table' needs alphas_cumprod (a decreasing list in (0, 1))"
            )
        return DiscreteSchedule(torch.tensor(spec.alphas_cumprod, dtype=torch.float64), spec)
    if steps < 2:
        raise HetdiffError(f"num_train_timesteps must be >= 2, got {steps}")
    if spec.name == "cosine":
        betas = cosine_betas(steps)
    else:
        start_default, end_default = _BETA_DEFAULTS[spec.name]
        start = start_default if spec.beta_start is None else float(spec.beta_start)
        end = end_default if spec.beta_end is None else float(spec.beta_end)
        if not 0 < start <= end < 1:
            raise HetdiffError(
                f"betas must satisfy 0 < beta_start <= beta_end < 1, got {start} and {end}"
            )
        make = linear_betas if spec.name == "linear" else scaled_linear_betas
        betas = make(steps, start, end)
        spec = ScheduleSpec(spec.name, steps, start, end)
    return DiscreteSchedule(alphas_cumprod_from_betas(betas), spec)


# --------------------------------------------------------------------------------------------
# Small shared helpers
# --------------------------------------------------------------------------------------------


def check_t_in_range(t: Tensor, lo: float, hi: float, what: str, tol: float = 1e-9) -> None:
    """Raise a one-line HetdiffError if any t is outside [lo, hi] (beyond ``tol``) or not finite."""
    t = torch.as_tensor(t)
    if t.numel() == 0:
        return
    bad = ~torch.isfinite(t) | (t < lo - tol) | (t > hi + tol)
    if bad.any():
        value = t[bad].flatten()[0].item()
        raise HetdiffError(
            f"t = {value!r} is outside the valid range [{lo:.6g}, {hi:.6g}] of {what}; "
            "limit the time grid to that range"
        )


def _float_dtype(x: Tensor | float) -> torch.dtype:
    dtype = torch.as_tensor(x).dtype
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def expand_time(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a (B,) or scalar time to broadcast against x of shape (B, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))
