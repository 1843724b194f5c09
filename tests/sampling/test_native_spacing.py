"""``sample --native --spacing``: DDIM with diffusers' timestep lists and step targets equals
diffusers' DDIMScheduler (eta 0) on the same model and noise, to float64 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from PIL import Image

from diffusers_models import save_folder, tiny_unet
from hetdiff.cli import main
from hetdiff.config import SPACINGS
from hetdiff.data.montage import save_grid
from hetdiff.experts.build import native_ddim
from hetdiff.experts.diffusers_import import import_diffusers_expert, sampler_conventions
from hetdiff.experts.store import load_expert_model
from hetdiff.sampling.solvers import (
    ddim_timesteps,
    sample_ddim,
    sample_ddim_spaced,
    seeded_noise,
    spaced_timesteps,
)


def diffusers_ddim(unet, config, spacing, noise, steps, table=None):
    """DDIMScheduler.from_config(config) with ``spacing``, eta 0. ``table``: give diffusers the
    same float64 alphas_cumprod as ours (it builds its own in float32)."""
    scheduler = DDIMScheduler.from_config(config, timestep_spacing=spacing)
    if table is not None:
        scheduler.alphas_cumprod = table.clone()
        one = torch.tensor(1.0, dtype=torch.float64)
        scheduler.final_alpha_cumprod = one if scheduler.config.set_alpha_to_one else table[0]
    scheduler.set_timesteps(steps)
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    return x, scheduler.timesteps


CONFIGS = {
    "ddim-offset1-clip": DDIMScheduler(
        steps_offset=1, set_alpha_to_one=False, clip_sample=True, prediction_type="v_prediction"
    ),  # fmt: skip
    "ddpm-cosine-noclip": DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def imported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    unet = tiny_unet(7)
    folder = save_folder(unet, CONFIGS[request.param], root / "model")
    path, _ = import_diffusers_expert(folder, root / "expert")
    return unet, dict(CONFIGS[request.param].config), path


@pytest.mark.parametrize("spacing", SPACINGS)
def test_native_spacing_equals_diffusers_ddim(imported, spacing):
    unet, config, path = imported
    net, spec = load_expert_model(path)
    net, unet64 = net.double(), unet.double()
    schedule, prediction, learned_variance = native_ddim(spec)
    conventions = sampler_conventions(spec)
    noise = seeded_noise([0, 1], (1, 8, 8), dtype=torch.float64)
    for steps in (7, 50):
        ours = sample_ddim_spaced(
            net, schedule, prediction, noise, steps, spacing, None, learned_variance,
            conventions["steps_offset"], conventions["set_alpha_to_one"],
            conventions["clip_sample_range"],
        )  # fmt: skip
        theirs, timesteps = diffusers_ddim(unet64, config, spacing, noise, steps,
                                           schedule.alphas_cumprod)  # fmt: skip
        float32_table, _ = diffusers_ddim(unet64, config, spacing, noise, steps)
        T = config["num_train_timesteps"]
        assert torch.equal(
            spaced_timesteps(T, steps, spacing, conventions["steps_offset"]), timesteps
        )
        scale = theirs.abs().max()
        err = float((ours - theirs).abs().max() / scale)
        err32 = float((ours - float32_table).abs().max() / scale)
        print(f"{spacing:8s} {steps:2d} steps: rel. err {err:.1e} (same float64 table), "
              f"{err32:.1e} (diffusers' float32 table)")  # fmt: skip
        assert err < 1e-12 and err32 < 1e-4
    if spacing == "linspace":  # the old sampler: the same list, but the next entry as target
        old = sample_ddim(net, schedule, prediction, noise, ddim_timesteps(schedule, 50))
        print(f"old linspace sampler vs diffusers: {float((old - theirs).abs().max() / scale):.1e}")


def test_cli_native_spacing_writes_diffusers_images(imported, tmp_path, capsys):
    unet, config, path = imported
    argv = ["sample", "--expert", str(path), "--native", "--spacing", "trailing", "--n", "3"]
    assert main([*argv, "--steps", "10", "--out", str(tmp_path / "ours.png")]) == 0
    noise = seeded_noise([0, 1, 2], (1, 8, 8))
    theirs, _ = diffusers_ddim(unet.float(), config, "trailing", noise, 10)
    save_grid(theirs.clamp(-1, 1), tmp_path / "theirs.png", nrow=8)
    ours = np.asarray(Image.open(tmp_path / "ours.png"), dtype=np.int16)
    expected = np.asarray(Image.open(tmp_path / "theirs.png"), dtype=np.int16)
    assert ours.shape == expected.shape and np.abs(ours - expected).max() <= 1
    assert main([*argv[:3], "--spacing", "leading", "--out", str(tmp_path / "x.png")]) == 2
    assert "--spacing applies to --native" in capsys.readouterr().err
