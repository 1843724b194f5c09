"""hetdiff.load_expert / velocity_expert / make_ensemble: real checkpoints and the exact
Gaussian-mixture velocity in float64."""

from __future__ import annotations

import pytest
import torch

import hetdiff
from expert_files import probe_batch, write_ddpm_expert
from hetdiff.experts.build import load_velocity_model
from hetdiff.objectives.schedules import make_schedule


def points(mixture, t_range, n_t=64, per_t=4, seed=1):
    """x_t on the flow path at n_t times across t_range, per_t samples each (float64)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(*t_range, n_t, dtype=torch.float64).repeat_interleave(per_t)
    x0, _ = mixture.sample(t.shape[0], gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    return (1 - t.reshape(-1, 1, 1, 1)) * x0 + t.reshape(-1, 1, 1, 1) * eps, t


@pytest.mark.parametrize("schedule", ["linear", "cosine", "scaled_linear"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_velocity_expert_reads_a_ddpm_net_as_the_exact_velocity(mixture, schedule, prediction):
    table = make_schedule(schedule)
    net = mixture.ddpm_net(table, prediction)  # the exact DDPM model of the mixture
    expert = hetdiff.velocity_expert(net, "ddpm", prediction, schedule)
    assert expert.t_range == table.t_range
    x_t, t = points(mixture, table.t_range)
    exact = mixture.velocity(x_t, t)
    err = (expert(x_t, t) - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)
    assert err.max() <= 1e-10


def test_a_schedule_table_reads_like_its_name(mixture):
    table = make_schedule("cosine")
    net = mixture.ddpm_net(table, "eps")
    by_name = hetdiff.velocity_expert(net, "ddpm", "eps", "cosine")
    listed = {"name": "table", "alphas_cumprod": table.alphas_cumprod.tolist()}
    by_table = hetdiff.velocity_expert(net, "ddpm", "eps", listed)
    x_t, t = points(mixture, table.t_range, n_t=16, per_t=1)
    torch.testing.assert_close(by_table(x_t, t), by_name(x_t, t), rtol=1e-9, atol=1e-12)


def test_a_flow_net_is_its_own_velocity(mixture):
    expert = hetdiff.velocity_expert(mixture.flow_net())
    x_t, t = points(mixture, (0.0, 1.0), n_t=11, per_t=2)
    torch.testing.assert_close(expert(x_t, t), mixture.velocity(x_t, t), rtol=1e-12, atol=1e-12)


def test_velocity_expert_refuses_mismatched_objectives(mixture):
    with pytest.raises(hetdiff.HetdiffError, match="schedule is for ddpm"):
        hetdiff.velocity_expert(mixture.flow_net(), "flow", schedule="cosine")
    with pytest.raises(hetdiff.HetdiffError, match="does not fit objective"):
        hetdiff.velocity_expert(mixture.flow_net(), "ddpm", "velocity")


def test_load_expert_from_its_file_or_folder_keeps_the_spec(tmp_path):
    path = write_ddpm_expert(tmp_path / "expert-1" / "expert.safetensors")
    reference, spec = load_velocity_model(path)
    x, t, labels = probe_batch()
    for where in (path, tmp_path / "expert-1"):
        expert = hetdiff.load_expert(where)
        assert expert.spec == spec and expert.t_range == reference.t_range
        torch.testing.assert_close(expert(x, t, labels), reference(x, t, labels))


def test_a_uniform_ensemble_averages_its_experts(mixture):
    table = make_schedule("linear")
    ddpm = hetdiff.velocity_expert(mixture.ddpm_net(table, "eps"), "ddpm", "eps", table)
    halved = hetdiff.velocity_expert(_Scaled(mixture.flow_net(), 0.5))  # 0.5 x exact
    ensemble = hetdiff.make_ensemble([ddpm, halved])  # no router: equal weights
    assert ensemble.t_range == table.t_range and ensemble.spec is None
    x_t, t = points(mixture, table.t_range, n_t=16, per_t=2)
    # (v + v / 2) / 2 with v exact: the routed mixture in closed form
    exact = mixture.velocity(x_t, t)
    torch.testing.assert_close(ensemble(x_t, t), 0.75 * exact, rtol=1e-9, atol=1e-9)
    both = hetdiff.with_strategy(ensemble, "top-k", top_k=2)  # the two largest = all
    torch.testing.assert_close(both(x_t, t), 0.75 * exact, rtol=1e-9, atol=1e-9)


class _Scaled(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x, timestep, cond=None):
        return self.scale * self.net(x, timestep, cond)
