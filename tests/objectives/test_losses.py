import pytest
import torch
from torch import nn

from hetdiff.errors import HetdiffError
from hetdiff.objectives.losses import (
    ddpm_loss,
    flow_loss,
    make_loss_fn,
    sample_flow_times,
)
from hetdiff.objectives.schedules import make_schedule
from hetdiff.objectives.velocity import DDPMVelocity, FlowVelocity


class Scaled(nn.Module):
    """A perturbed copy of an exact model: output * factor."""

    def __init__(self, net, factor):
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x, timestep, cond=None):
        return self.net(x, timestep, cond) * self.factor


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_loss_is_minimized_by_the_exact_model(mixture, prediction):
    schedule = make_schedule("cosine")
    x0, _ = mixture.sample(4000, torch.Generator().manual_seed(0))
    exact = mixture.ddpm_net(schedule, prediction)
    losses = {}
    for factor in (0.9, 1.0, 1.1):
        gen = torch.Generator().manual_seed(1)  # same noise and steps for each model
        loss = ddpm_loss(Scaled(exact, factor), x0, schedule, prediction, gen)
        assert loss.shape == (4000,)
        losses[factor] = loss.mean().item()
    assert losses[1.0] < losses[0.9] and losses[1.0] < losses[1.1]


def test_ddpm_v_target_by_hand(mixture):
    schedule = make_schedule("linear")
    x0, _ = mixture.sample(8, torch.Generator().manual_seed(0))
    captured = {}

    class Probe(nn.Module):
        def forward(self, x, timestep, cond=None):
            captured["x"], captured["s"] = x, timestep
            return torch.zeros_like(x)

    loss = ddpm_loss(Probe(), x0, schedule, "v", torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    steps = torch.randint(0, 1000, (8,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    abar = schedule.alphas_cumprod[steps].reshape(-1, 1, 1, 1)
    assert torch.equal(captured["s"], steps.double())
    assert torch.allclose(captured["x"], abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    target = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(loss, (target**2).flatten(1).mean(1).float())


def test_flow_loss_is_minimized_by_the_exact_velocity(mixture):
    x0, _ = mixture.sample(4000, torch.Generator().manual_seed(0))
    losses = {}
    for factor in (0.9, 1.0, 1.1):
        velocity = FlowVelocity(Scaled(mixture.flow_net(), factor))
        losses[factor] = flow_loss(velocity, x0, torch.Generator().manual_seed(2)).mean().item()
    assert losses[1.0] < min(losses[0.9], losses[1.1])


def test_flow_loss_through_a_ddpm_adapter_stays_in_range(mixture):
    schedule = make_schedule("linear")
    adapter = DDPMVelocity(mixture.ddpm_net(schedule, "eps"), schedule, "eps")
    x0, _ = mixture.sample(64, torch.Generator().manual_seed(0))
    for sampling in ("uniform", "logit_normal"):
        loss = flow_loss(adapter, x0, torch.Generator().manual_seed(3), time_sampling=sampling)
        assert torch.isfinite(loss).all()


def test_time_sampling_distributions():
    gen = torch.Generator().manual_seed(0)
    u = sample_flow_times(20000, gen, "cpu", "uniform")
    ln = sample_flow_times(20000, gen, "cpu", "logit_normal")
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.std().item() - (1 / 12) ** 0.5) < 0.01
    assert abs(ln.median().item() - 0.5) < 0.01 and ln.std().item() < u.std().item()
    ranged = sample_flow_times(1000, gen, "cpu", "uniform", (0.2, 0.3))
    assert ranged.min() >= 0.2 and ranged.max() <= 0.3


def test_make_loss_fn_drops_labels_with_the_generator(mixture):
    seen = []

    class Probe(nn.Module):
        def forward(self, x, timestep, cond=None):
            seen.append(cond)
            return torch.zeros_like(x)

    loss_fn = make_loss_fn("flow", label_dropout=0.5)
    x0, _ = mixture.sample(2000, torch.Generator().manual_seed(0))
    labels = torch.zeros(2000, dtype=torch.long)
    loss_fn(Probe(), x0, labels, torch.Generator().manual_seed(0))
    cond = seen[-1]
    dropped = (getattr(cond, "class_labels", cond) == -1).float().mean().item()
    assert 0.45 < dropped < 0.55
    with pytest.raises(HetdiffError, match="needs a schedule"):
        make_loss_fn("ddpm", "eps")
    with pytest.raises(HetdiffError, match="unknown time sampling 'beta'"):
        sample_flow_times(3, torch.Generator(), "cpu", "beta")
