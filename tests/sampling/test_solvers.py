import pytest
import torch

from helpers import rel_err
from hetdiff.errors import HetdiffError
from hetdiff.objectives.schedules import make_schedule
from hetdiff.objectives.velocity import DDPMVelocity, FlowVelocity
from hetdiff.sampling.solvers import (
    ddim_timesteps,
    get_solver,
    sample_ddim,
    sample_euler,
    sample_heun,
    seeded_noise,
    solve,
    time_grid,
)


def ddpm_setup(mixture, schedule_name="linear", prediction="eps"):
    schedule = make_schedule(schedule_name)
    net = mixture.ddpm_net(schedule, prediction)
    return schedule, net, DDPMVelocity(net, schedule, prediction)


def flow_start(schedule, timesteps, eps):
    """The native DDIM start x_s = eps (at step timesteps[0]) mapped onto the flow path."""
    t0 = schedule.t_of_step(timesteps[:1].double())
    return eps * torch.sqrt((1 - t0) ** 2 + t0**2), t0


def ddim_grid(schedule, timesteps):
    t = schedule.t_of_step(timesteps.double())
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_euler_on_the_ddim_grid_is_ddim(mixture, prediction):
    """DDIM (eta = 0) is exactly Euler on the flow path: same grid, same result to rounding."""
    schedule, net, adapter = ddpm_setup(mixture, "cosine", prediction)
    eps = seeded_noise(range(16), (2, 2, 2), dtype=torch.float64)
    timesteps = ddim_timesteps(schedule, 20)
    native = sample_ddim(net, schedule, prediction, eps, timesteps)
    x, _ = flow_start(schedule, timesteps, eps)
    converted = sample_euler(adapter, x, ddim_grid(schedule, timesteps))
    assert rel_err(converted, native) < 1e-10


def test_heun_through_the_adapter_converges_to_native_ddim(mixture):
    schedule, net, adapter = ddpm_setup(mixture, "linear", "eps")
    eps = seeded_noise(range(32), (2, 2, 2), dtype=torch.float64)
    timesteps = ddim_timesteps(schedule, 1000)
    # DDIM at 1000 steps, Richardson-extrapolated with 500 steps, is the converged reference:
    # DDIM is first order, so 2 * x_1000 - x_500 cancels its leading error term.
    ddim_1000 = sample_ddim(net, schedule, "eps", eps, timesteps)
    ddim_500 = sample_ddim(net, schedule, "eps", eps, ddim_timesteps(schedule, 500))
    reference = 2 * ddim_1000 - ddim_500
    x, t0 = flow_start(schedule, timesteps, eps)
    errors = {}
    for steps in (25, 100, 400):
        grid = time_grid(steps, t_max=float(t0), t_min=schedule.t_range[0])
        errors[steps] = rel_err(sample_heun(adapter, x, grid), reference)
    assert errors[400] < 1e-3
    assert errors[25] > errors[100] > errors[400]
    # the native sampler converges to the same point: DDIM's own error halves with twice the steps
    assert rel_err(ddim_1000, reference) < 0.6 * rel_err(ddim_500, reference)
    print("heun-through-adapter error vs converged DDIM:", errors)


def test_heun_is_second_order(mixture):
    velocity = FlowVelocity(mixture.flow_net())
    x = seeded_noise(range(8), (2, 2, 2), dtype=torch.float64)
    reference = sample_heun(velocity, x, time_grid(2000, t_min=0.0))
    e1 = rel_err(sample_heun(velocity, x, time_grid(50)), reference)
    e2 = rel_err(sample_heun(velocity, x, time_grid(100)), reference)
    assert 3.0 < e1 / e2 < 5.0  # halving h divides the error by ~4
    eu1 = rel_err(sample_euler(velocity, x, time_grid(50)), reference)
    eu2 = rel_err(sample_euler(velocity, x, time_grid(100)), reference)
    assert 1.6 < eu1 / eu2 < 2.4  # Euler: by ~2
    assert e1 < eu1


def test_samples_land_on_the_data(mixture):
    """Sampling the exact model reproduces the mixture's component weights and spreads."""
    velocity = FlowVelocity(mixture.flow_net())
    noise = seeded_noise(range(3000), (2, 2, 2), dtype=torch.float64)
    x0 = solve(velocity, noise, steps=60, solver="heun")
    flat = x0.reshape(len(x0), -1)
    nearest = torch.cdist(flat, mixture.means).argmin(dim=1)
    freq = torch.bincount(nearest, minlength=3).double() / len(x0)
    assert torch.allclose(freq, mixture.weights, atol=0.03)
    for j in range(3):
        spread = (flat[nearest == j] - mixture.means[j]).std()
        assert spread == pytest.approx(float(mixture.stds[j]), rel=0.1)


def test_time_grids():
    g = time_grid(10)
    assert g.shape == (11,) and g[0] == 1.0 and g[-1] == 0.0 and torch.all(g[1:] < g[:-1])
    assert torch.allclose(g, torch.linspace(1, 0, 11, dtype=torch.float64))
    shifted = time_grid(10, shift=3.0)
    assert torch.all(shifted[1:-1] > g[1:-1])  # more points near t = 1
    ranged = time_grid(10, t_max=0.99, t_min=0.01)
    assert ranged.shape == (11,) and ranged[0] == 0.99 and ranged[-2] == pytest.approx(0.01)
    assert ranged[-1] == 0.0


def test_seeded_noise_depends_on_the_seed_alone():
    a = seeded_noise([3, 4, 5], (1, 4, 4))
    torch.randn(100)  # unrelated global draws change nothing
    b = seeded_noise([5], (1, 4, 4))
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])


def test_ddim_timesteps():
    schedule = make_schedule("linear")
    assert ddim_timesteps(schedule, 1000).tolist() == list(range(999, -1, -1))
    ts = ddim_timesteps(schedule, 10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: time_grid(0), "steps must be a positive integer"),
        (lambda: time_grid(10, t_max=1.5), "t_max=1.5"),
        (lambda: get_solver("rk45"), "unknown solver 'rk45'"),
        (lambda: ddim_timesteps(make_schedule("linear"), 1001), "[1, 1000]"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(HetdiffError) as info:
        call()
    assert message in str(info.value)
