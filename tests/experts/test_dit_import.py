"""A facebookresearch/DiT file imported as a hetdiff expert: a DDPM eps expert with learned
variance whose velocity adapter reads the reference's eps channels."""

from __future__ import annotations

import math

import torch

from dit_reference import HEADS, SIDE, C, K, inputs, ours, reference_forward, reference_state_dict
from hetdiff.experts.dit_import import import_dit_expert


def test_imported_expert_plugs_in_through_the_ddpm_adapter(tmp_path):
    from hetdiff.experts.build import load_velocity_model
    from hetdiff.objectives.velocity import DDPMVelocity

    state = reference_state_dict()
    torch.save(state, tmp_path / "dit.pt")
    path = import_dit_expert(tmp_path / "dit.pt", tmp_path / "dit.safetensors", num_heads=HEADS)
    velocity, spec = load_velocity_model(path)
    assert isinstance(velocity, DDPMVelocity) and velocity.learned_variance
    assert (spec.objective, spec.prediction, spec.schedule["name"]) == ("ddpm", "eps", "linear")
    assert spec.learned_variance and spec.num_classes == K and spec.resolution == SIDE
    assert spec.provenance["imported_from"]["format"] == "facebookresearch/DiT"
    assert len(spec.provenance["imported_from"]["sha256"]) == 64
    # the adapter reads the eps channels of the reference at the fractional step of t
    x, _, y = inputs()
    t = torch.full((6,), 0.4)
    with torch.no_grad():
        v = velocity(x.float(), t, ours(y)).double()
    scale = math.sqrt(0.6**2 + 0.4**2)
    step = velocity.schedule.step_of_t(t.double())
    eps = reference_forward(state, x / scale, step, y)[:, :C]
    alpha, sigma = 0.6 / scale, 0.4 / scale
    x0 = (x / scale - sigma * eps) / alpha
    assert float((v - (eps - x0)).abs().max() / (eps - x0).abs().max()) < 1e-4
