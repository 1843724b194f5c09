"""Min-SNR-gamma weighting of the DDPM loss (Hang et al. 2023): the weights per target against
an independent float64 computation of each schedule's SNR, the weighted loss equals weight x
unweighted per sample (same draws), the limits (gamma -> inf: eps weight exactly 1, x0 weight
SNR, v weight abar), and refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hetdiff.config import ExpertSettings
from hetdiff.errors import HetdiffError
from hetdiff.objectives.losses import ddpm_loss, make_loss_fn, min_snr_weight
from hetdiff.objectives.schedules import make_schedule

T = 1000


def reference_alphas_cumprod(name: str) -> torch.Tensor:
    """abar_s, float64, written out here from the papers (not from hetdiff's schedule code):
    linear (Ho et al.) beta_s from 1e-4 to 0.02; cosine (Nichol & Dhariwal) with s = 0.008 and
    betas clipped at 0.999."""
    if name == "linear":
        betas = [1e-4 + (0.02 - 1e-4) * s / (T - 1) for s in range(T)]
    else:
        f = [math.cos((s / T + 0.008) / 1.008 * math.pi / 2) ** 2 for s in range(T + 1)]
        betas = [min(1 - f[s + 1] / f[s], 0.999) for s in range(T)]
    abar, product = [], 1.0
    for beta in betas:
        product *= 1 - beta
        abar.append(product)
    return torch.tensor(abar, dtype=torch.float64)


def reference_weight(name: str, prediction: str, gamma: float) -> torch.Tensor:
    """The paper's weights, (T,) float64: SNR = abar / (1 - abar); eps min(SNR, g) / SNR,
    x0 min(SNR, g), v min(SNR, g) / (SNR + 1)."""
    abar = reference_alphas_cumprod(name)
    snr = abar / (1 - abar)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]


class ZeroNet(nn.Module):
    """Predicts 0 everywhere: the per-sample loss is mean(target^2), different per sample."""

    def forward(self, x, timestep, cond=None):
        return torch.zeros_like(x)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [0.5, 5.0])
def test_weights_match_the_float64_reference_at_every_step(name, prediction, gamma):
    schedule = make_schedule(name)
    steps = torch.arange(T, dtype=torch.float64)
    weight = min_snr_weight(schedule.log_snr(steps).exp(), prediction, gamma)
    reference = reference_weight(name, prediction, gamma)
    assert weight.dtype == torch.float64
    assert torch.allclose(weight, reference, rtol=1e-9, atol=0), (weight - reference).abs().max()
    # both regimes are exercised: SNR above gamma (clipped) and below it
    snr = reference_alphas_cumprod(name) / (1 - reference_alphas_cumprod(name))
    assert (snr > gamma).any() and (snr < gamma).any()


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_weighted_loss_is_weight_times_unweighted_per_sample(name, prediction):
    schedule = make_schedule(name)
    x0 = torch.randn(512, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    gamma = 5.0
    unweighted = ddpm_loss(ZeroNet(), x0, schedule, prediction, torch.Generator().manual_seed(7))
    weighted = ddpm_loss(ZeroNet(), x0, schedule, prediction, torch.Generator().manual_seed(7),
                         min_snr_gamma=gamma)  # fmt: skip
    steps = torch.randint(0, T, (512,), generator=torch.Generator().manual_seed(7))
    expected = unweighted.double() * reference_weight(name, prediction, gamma)[steps]
    assert weighted.shape == (512,) and weighted.dtype == unweighted.dtype
    assert torch.allclose(weighted.double(), expected, rtol=1e-6, atol=0)
    clipped = reference_alphas_cumprod(name)[steps]
    clipped = clipped / (1 - clipped) > gamma
    assert clipped.any() and (~clipped).any()  # the draws hit both sides of gamma
    if prediction == "eps":  # unclipped steps keep weight 1: their loss is untouched, bitwise
        assert torch.equal(weighted[~clipped], unweighted[~clipped])
        assert (weighted[clipped] < unweighted[clipped]).all()


def test_huge_gamma_limits():
    schedule = make_schedule("linear")
    x0 = torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(1))

    def loss(prediction, gamma):
        gen = torch.Generator().manual_seed(3)
        return ddpm_loss(ZeroNet(), x0, schedule, prediction, gen, min_snr_gamma=gamma)

    # eps: min(SNR, gamma) / SNR = 1 exactly once gamma exceeds every SNR of the schedule
    assert torch.equal(loss("eps", 1e30), loss("eps", None))
    steps = torch.arange(T, dtype=torch.float64)
    snr = schedule.log_snr(steps).exp()
    abar = reference_alphas_cumprod("linear")
    assert torch.equal(min_snr_weight(snr, "eps", 1e30), torch.ones(T, dtype=torch.float64))
    assert torch.allclose(min_snr_weight(snr, "x0", 1e30), abar / (1 - abar), rtol=1e-9)
    assert torch.allclose(min_snr_weight(snr, "v", 1e30), abar, rtol=1e-9)  # SNR / (SNR + 1)
    # a tiny gamma clips every step: eps weight gamma / SNR
    assert torch.allclose(min_snr_weight(snr, "eps", 1e-8), 1e-8 * (1 - abar) / abar, rtol=1e-9)
    # SNR = 0 (a zero-terminal-SNR table): eps weight 1, x0 and v weight 0, nothing infinite
    zero = torch.zeros(1, dtype=torch.float64)
    assert [float(min_snr_weight(zero, p, 5.0)) for p in ("eps", "x0", "v")] == [1.0, 0.0, 0.0]


def test_refusals():
    snr = torch.ones(3, dtype=torch.float64)
    with pytest.raises(HetdiffError, match="min_snr_gamma must be > 0"):
        min_snr_weight(snr, "eps", 0.0)
    with pytest.raises(HetdiffError, match="unknown prediction type 'velocity'"):
        min_snr_weight(snr, "velocity", 5.0)
    with pytest.raises(HetdiffError, match="a flow objective takes none"):
        make_loss_fn("flow", min_snr_gamma=5.0)
    with pytest.raises(HetdiffError, match="min_snr_gamma weights the DDPM loss"):
        ExpertSettings(objective="flow", min_snr_gamma=5.0)
    with pytest.raises(HetdiffError, match="min_snr_gamma must be > 0 or null, got -1"):
        ExpertSettings(objective="ddpm", min_snr_gamma=-1)
    with pytest.raises(HetdiffError, match="min_snr_gamma must be a number or null"):
        ExpertSettings(objective="ddpm", min_snr_gamma="5")
    assert ExpertSettings(objective="ddpm", min_snr_gamma=5).min_snr_gamma == 5
    assert ExpertSettings().min_snr_gamma is None


def test_make_loss_fn_passes_gamma_to_the_ddpm_loss():
    schedule = make_schedule("cosine")
    x0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    loss_fn = make_loss_fn("ddpm", "v", schedule, min_snr_gamma=2.0)
    got = loss_fn(ZeroNet(), x0, None, torch.Generator().manual_seed(4))
    want = ddpm_loss(ZeroNet(), x0, schedule, "v", torch.Generator().manual_seed(4),
                     min_snr_gamma=2.0)  # fmt: skip
    plain = make_loss_fn("ddpm", "v", schedule)(
        ZeroNet(), x0, None, torch.Generator().manual_seed(4)
    )
    assert torch.equal(got, want) and not torch.equal(got, plain)
