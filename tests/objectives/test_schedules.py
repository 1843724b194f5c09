import math

import numpy as np
import pytest
import torch

from hetdiff.errors import HetdiffError
from hetdiff.objectives.schedules import (
    DiscreteSchedule,
    ScheduleSpec,
    make_schedule,
)


def numpy_abar(name: str, T: int = 1000) -> np.ndarray:
    """Independent float64 reference tables."""
    if name == "linear":
        betas = np.linspace(1e-4, 0.02, T)
    elif name == "scaled_linear":
        betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), T) ** 2
    else:
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_tables_match_reference_formulas(name):
    schedule = make_schedule(name)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), numpy_abar(name), rtol=1e-12)
    steps = torch.arange(1000, dtype=torch.float64)
    np.testing.assert_allclose(schedule.alpha_bar(steps).numpy(), numpy_abar(name), rtol=1e-12)


def test_linear_range_matches_design_numbers():
    lo, hi = make_schedule("linear").t_range
    assert lo == pytest.approx(0.0099, abs=1e-4)
    assert hi == pytest.approx(0.9937, abs=1e-4)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_step_of_t_is_exact_at_knots_and_monotone_between(name):
    schedule = make_schedule(name)
    knots = torch.arange(1000, dtype=torch.float64)
    t_knots = schedule.t_of_step(knots)
    assert torch.all(t_knots[1:] > t_knots[:-1])
    back = schedule.step_of_t(t_knots)
    assert torch.max(torch.abs(back - knots)) < 1e-8
    lo, hi = schedule.t_range
    t = torch.linspace(lo, hi, 20011, dtype=torch.float64)
    s = schedule.step_of_t(t)
    assert torch.all(s[1:] > s[:-1])
    assert s[0] == pytest.approx(0.0, abs=1e-8) and s[-1] == pytest.approx(999.0, abs=1e-8)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_snr_matching_formula(name):
    """abar(s*(t)) = (1 - t)^2 / ((1 - t)^2 + t^2) everywhere inside the range."""
    schedule = make_schedule(name)
    lo, hi = schedule.t_range
    t = torch.linspace(lo, hi, 997, dtype=torch.float64)
    expected = (1 - t) ** 2 / ((1 - t) ** 2 + t**2)
    got = schedule.alpha_bar(schedule.step_of_t(t))
    assert torch.max(torch.abs(got - expected) / expected) < 1e-12


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_float32_range_ends_are_accepted(name):
    """The range ends rounded to float32 may lie just outside the float64 range: still valid."""
    schedule = make_schedule(name)
    ends = torch.tensor(schedule.t_range, dtype=torch.float32)
    steps = schedule.step_of_t(ends)
    assert steps.dtype == torch.float32
    assert torch.allclose(steps, torch.tensor([0.0, 999.0]), atol=1e-2)


def test_fractional_steps_interpolate_log_snr():
    schedule = make_schedule("cosine")
    lam = schedule.log_snr_table
    s = torch.tensor([10.25, 500.5, 998.75], dtype=torch.float64)
    expected = torch.stack(
        [
            lam[10] + 0.25 * (lam[11] - lam[10]),
            (lam[500] + lam[501]) / 2,
            lam[998] + 0.75 * (lam[999] - lam[998]),
        ]
    )
    assert torch.allclose(schedule.log_snr(s), expected, rtol=0, atol=1e-12)


def test_table_schedule_and_spec_round_trip():
    table = make_schedule("linear").alphas_cumprod[::10]
    schedule = DiscreteSchedule(table)
    rebuilt = make_schedule(schedule.spec.to_dict())
    assert torch.equal(rebuilt.alphas_cumprod, schedule.alphas_cumprod)
    spec = make_schedule(ScheduleSpec("scaled_linear", 500)).spec
    assert make_schedule(spec.to_dict()).alphas_cumprod.shape == (500,)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: make_schedule("quadratic"), "unknown schedule 'quadratic'"),
        (lambda: DiscreteSchedule(torch.tensor([0.9, 0.95, 0.5])), "strictly decreasing; step 1"),
        (lambda: DiscreteSchedule(torch.tensor([1.0, 0.5])), "strictly inside (0, 1)"),
        (lambda: make_schedule({"name": "linear", "beta_strat": 0.1}), "beta_strat"),
        (lambda: make_schedule(ScheduleSpec("linear", beta_start=0.5, beta_end=0.1)), "beta_start"),
        (lambda: make_schedule("linear").step_of_t(torch.tensor([1.5])), "t = 1.5"),
        (lambda: make_schedule("linear").step_of_t(torch.tensor([-0.1])), "t = -0.1"),
        (lambda: make_schedule("linear").step_of_t(torch.tensor([0.999])), "outside the valid"),
        (lambda: make_schedule("linear").log_snr(torch.tensor([1000.0])), "outside [0, 999]"),
    ],
)
def test_bad_input_is_a_one_line_error(build, message):
    with pytest.raises(HetdiffError) as info:
        build()
    assert message in str(info.value)
    assert "\n" not in str(info.value)
