"""diffusers' flow sigma grid: ``flow_match_sigmas`` is FlowMatchEulerDiscreteScheduler's own
``set_timesteps`` grid (shift and T), and an imported flow model with a shifted scheduler
samples by default on it, so ``generate`` (Euler) reproduces diffusers' scheduler loop from the
same noise; an explicit ``shift`` still chooses our uniform-in-u grid."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_models import save_folder, tiny_pixart
from hetdiff.cli import main
from hetdiff.experts.build import load_velocity_model
from hetdiff.experts.diffusers_import import import_diffusers_expert
from hetdiff.experts.diffusers_scheduler import FlowMatchGrid, flow_match_sigmas
from hetdiff.sampling.generate import generate
from hetdiff.sampling.solvers import seeded_noise


@pytest.mark.parametrize(("steps", "shift", "T"), [(1, 1.0, 1000), (7, 1.0, 1000),
                                                    (10, 3.0, 1000), (25, 0.5, 100)])  # fmt: skip
def test_sigmas_are_diffusers_own(steps, shift, T):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    scheduler.set_timesteps(steps)
    ours = flow_match_sigmas(steps, shift, T)
    assert ours.dtype == torch.float64 and ours.shape == (steps + 1,) and ours[-1] == 0
    torch.testing.assert_close(ours.float(), scheduler.sigmas, rtol=0, atol=1e-6)
    torch.testing.assert_close((ours[:-1] * T).float(), scheduler.timesteps, rtol=1e-6, atol=1e-4)


def diffusers_loop(model, scheduler, noise, steps):
    """diffusers' own sampling loop: x <- scheduler.step(model(x, t), t, x)."""
    scheduler.set_timesteps(steps)
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = model(x, timestep=t.expand(x.shape[0]), added_cond_kwargs={"resolution": None,
                      "aspect_ratio": None}).sample  # fmt: skip
            x = scheduler.step(v, t, x).prev_sample
    return x


def test_an_imported_shifted_flow_model_samples_like_diffusers(tmp_path, capsys):
    model = tiny_pixart(5)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    folder = save_folder(model, scheduler, tmp_path / "pixart")
    path, spec = import_diffusers_expert(folder, tmp_path / "expert", cluster_id=0)
    velocity, _ = load_velocity_model(path)
    assert repr(velocity.sampling_grid) == "FlowMatchGrid(shift=3.0, num_train_timesteps=1000.0)"
    seeds = [0, 1, 2]
    noise = seeded_noise(seeds, (1, 8, 8))
    for steps in (4, 12):
        theirs = diffusers_loop(model, scheduler, noise, steps)
        ours = generate(velocity, (1, 8, 8), seeds, steps, "euler")  # default: the model's grid
        uniform = generate(velocity, (1, 8, 8), seeds, steps, "euler", shift=1.0)
        shifted = generate(velocity, (1, 8, 8), seeds, steps, "euler", shift=3.0)
        err = float((ours - theirs).abs().max())
        print(f"{steps} Euler steps vs diffusers' FlowMatchEulerDiscreteScheduler(shift=3): "
              f"default {err:.1e}, shift=1 {float((uniform - theirs).abs().max()):.1e}, "
              f"shift=3 on our grid {float((shifted - theirs).abs().max()):.1e}")  # fmt: skip
        assert theirs.abs().max() > 0.5 and err < 1e-5
        assert float((uniform - theirs).abs().max()) > 1e3 * err
    # the command line samples on the same grid by default
    argv = ["sample", "--expert", str(path), "--n", "3", "--steps", "4", "--solver", "euler",
            "--out", str(tmp_path / "a.png")]  # fmt: skip
    assert main(argv) == 0
    assert main([*argv[:-1], str(tmp_path / "b.png"), "--shift", "1"]) == 0
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


def test_only_plain_flow_match_configs_get_a_grid(tmp_path):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=2.0, use_karras_sigmas=True)
    folder = save_folder(tiny_pixart(1), scheduler, tmp_path / "karras")
    path, _ = import_diffusers_expert(folder, tmp_path / "expert")
    assert not hasattr(load_velocity_model(path)[0], "sampling_grid")
    assert FlowMatchGrid(2.0, 1000)(3).tolist() == flow_match_sigmas(3, 2.0, 1000).tolist()


def test_an_ensemble_uses_the_grid_its_experts_share(tmp_path):
    from hetdiff.sampling.ensemble import Ensemble
    from hetdiff.sampling.generate import model_sampling_grid

    velocities = []
    for k, shift in enumerate((3.0, 3.0, 2.0)):
        folder = save_folder(tiny_pixart(k), FlowMatchEulerDiscreteScheduler(shift=shift),
                             tmp_path / f"m{k}")  # fmt: skip
        velocities.append(load_velocity_model(import_diffusers_expert(folder, tmp_path / f"e{k}",
                                                                      k)[0])[0])  # fmt: skip

    def uniform_router(x, t, cond=None):
        return torch.zeros(x.shape[0], 2)

    same = Ensemble(velocities[:2], [0, 1], uniform_router, 2)
    assert model_sampling_grid(same) == FlowMatchGrid(3.0, 1000)
    mixed = Ensemble([velocities[0], velocities[2]], [0, 1], uniform_router, 2)
    assert model_sampling_grid(mixed) is None  # different shifts: uniform in t
    seeds, noise = [4, 5], seeded_noise([4, 5], (1, 8, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(5)
    x = noise.clone()
    with torch.no_grad():  # the mean of the two experts' velocities, on diffusers' grid
        for i in range(5):
            t = torch.full((2,), float(scheduler.sigmas[i]))
            v = sum(velocity(x, t) for velocity in velocities[:2]) / 2
            x = x + (scheduler.sigmas[i + 1] - scheduler.sigmas[i]) * v
    ours = generate(same, (1, 8, 8), seeds, 5, "euler")
    assert float((ours - x).abs().max()) < 1e-5 and x.abs().max() > 0.5
