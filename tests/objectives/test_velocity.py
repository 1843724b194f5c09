import pytest
import torch

from helpers import rel_err
from hetdiff.errors import HetdiffError
from hetdiff.objectives.paths import (
    eps_from_velocity,
    velocity_from_eps,
    velocity_from_x0,
    x0_from_velocity,
)
from hetdiff.objectives.schedules import make_schedule
from hetdiff.objectives.velocity import (
    DDPMVelocity,
    FlowVelocity,
    common_t_range,
    make_velocity_model,
)

SCHEDULES = ["linear", "cosine", "scaled_linear"]


def points(mixture, t_range, n_t=64, per_t=4, seed=1):
    """x_t on the flow path at n_t times strictly inside t_range (per_t samples each)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = t_range
    t = torch.linspace(lo, hi, n_t, dtype=torch.float64).repeat_interleave(per_t)
    x0, _ = mixture.sample(t.shape[0], gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    tb = t.reshape(-1, 1, 1, 1)
    return (1 - tb) * x0 + tb * eps, t


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_adapter_equals_exact_velocity(mixture, schedule_name, prediction):
    schedule = make_schedule(schedule_name)
    adapter = DDPMVelocity(mixture.ddpm_net(schedule, prediction), schedule, prediction)
    x_t, t = points(mixture, schedule.t_range)
    got = adapter(x_t, t)
    # per-time relative error, at all 64 times including both ends of the range
    exact = mixture.velocity(x_t, t)
    err = (got - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)
    assert err.max() <= 1e-10, (schedule_name, prediction, float(err.max()))


def test_learned_variance_channels_are_dropped(mixture):
    schedule = make_schedule("cosine")
    net = mixture.ddpm_net(schedule, "eps", learned_variance=True)
    adapter = DDPMVelocity(net, schedule, "eps", learned_variance=True)
    x_t, t = points(mixture, schedule.t_range, n_t=50, per_t=1)
    assert rel_err(adapter(x_t, t), mixture.velocity(x_t, t)) <= 1e-10
    with pytest.raises(HetdiffError, match="returned shape"):
        DDPMVelocity(net, schedule, "eps")(x_t, t)


def test_flow_adapter_is_exact_on_the_whole_axis(mixture):
    adapter = FlowVelocity(mixture.flow_net())
    x_t, t = points(mixture, (0.0, 1.0), n_t=51, per_t=2)
    assert rel_err(adapter(x_t, t), mixture.velocity(x_t, t)) <= 1e-12
    assert adapter.covers_noise


def test_adapter_reports_its_range_and_refuses_outside(mixture):
    schedule = make_schedule("linear")
    adapter = make_velocity_model(mixture.ddpm_net(schedule, "eps"), "ddpm", "eps", schedule)
    assert adapter.t_range == schedule.t_range
    assert not adapter.covers_noise
    x = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    with pytest.raises(HetdiffError, match="outside the valid range"):
        adapter(x, torch.tensor([0.5, 0.999], dtype=torch.float64))
    with pytest.raises(HetdiffError, match="outside the valid range"):
        adapter(x, torch.tensor([0.001, 0.5], dtype=torch.float64))
    flow = FlowVelocity(mixture.flow_net())
    assert common_t_range([adapter, flow]) == schedule.t_range


def test_round_trips_hold_to_rounding(mixture):
    x_t, t = points(mixture, (0.05, 0.95), n_t=50, per_t=2)
    v = mixture.velocity(x_t, t)
    x0, eps = mixture.flow_posterior(x_t, t)
    assert rel_err(velocity_from_eps(x_t, t, eps_from_velocity(x_t, t, v)), v) < 1e-13
    assert rel_err(x0_from_velocity(x_t, t, velocity_from_x0(x_t, t, x0)), x0) < 1e-13
    # the identities agree with the exact posterior means
    assert rel_err(x0_from_velocity(x_t, t, v), x0) < 1e-12
    assert rel_err(eps_from_velocity(x_t, t, v), eps) < 1e-12


def test_float32_adapter_is_close(mixture):
    schedule = make_schedule("linear")
    adapter = DDPMVelocity(mixture.ddpm_net(schedule, "v"), schedule, "v")
    x_t, t = points(mixture, (0.05, 0.95), n_t=50, per_t=1)
    got = adapter(x_t.float(), t.float())
    assert got.dtype == torch.float32
    assert rel_err(got, mixture.velocity(x_t, t)) < 1e-4


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, s: make_velocity_model(m.flow_net(), "score"), "unknown objective 'score'"),
        (lambda m, s: DDPMVelocity(m.flow_net(), s, "noise"), "unknown prediction type 'noise'"),
        (lambda m, s: make_velocity_model(m.flow_net(), "ddpm", "eps"), "needs its schedule"),
        (lambda m, s: make_velocity_model(m.flow_net(), "flow", "eps"), "predicts 'velocity'"),
        (
            lambda m, s: FlowVelocity(m.flow_net())(torch.zeros(3, 2, 2, 2), torch.zeros(2)),
            "t must be a scalar or have shape (3,)",
        ),
        (
            lambda m, s: FlowVelocity(m.flow_net())(torch.zeros(1, 2, 2, 2), torch.tensor([1.2])),
            "t = 1.2",
        ),
    ],
)
def test_bad_input(mixture, call, message):
    with pytest.raises(HetdiffError) as info:
        call(mixture, make_schedule("linear"))
    assert message in str(info.value) and "\n" not in str(info.value)
