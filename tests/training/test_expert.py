"""A DDPM expert and a flow expert, trained a few hundred steps on a tiny slice of real data at
8 px, must learn: their loss on held-out images falls by a clear margin from the initial
network's, and their samples land much closer to the data than noise does (image statistics:
per-pixel mean and spread, and the pixel-value histogram)."""

from __future__ import annotations

import pytest
import torch

from hetdiff.config import ExpertSettings
from hetdiff.data.datasets import load_dataset
from hetdiff.experts.build import load_velocity_model
from hetdiff.experts.store import load_expert_model
from hetdiff.sampling.generate import generate
from hetdiff.training.expert import build_expert_net, expert_loss_fn, train_expert

STEPS = 250


def image_statistics_distance(a: torch.Tensor, b: torch.Tensor, bins: int = 16) -> float:
    """Distance between two image sets (N, C, H, W) in [-1, 1] (float64):
    mean |per-pixel mean difference| + mean |per-pixel std difference| + total variation
    between the pixel-value histograms. 0 for identical statistics."""
    a = a.flatten(1).to(torch.float64).clamp(-1, 1)
    b = b.flatten(1).to(torch.float64).clamp(-1, 1)
    mean_gap = (a.mean(0) - b.mean(0)).abs().mean()
    std_gap = (a.std(0) - b.std(0)).abs().mean()
    hist_a = torch.histc(a, bins=bins, min=-1, max=1)
    hist_b = torch.histc(b, bins=bins, min=-1, max=1)
    tv = (hist_a / hist_a.sum() - hist_b / hist_b.sum()).abs().sum() / 2
    return float(mean_gap + std_gap + tv)


def held_out_loss(net, settings: ExpertSettings, images: torch.Tensor) -> float:
    """The expert's training loss, unconditional, mean over ``images`` with fixed noise and
    times (seed 123)."""
    loss_fn = expert_loss_fn(settings)
    generator = torch.Generator().manual_seed(123)
    net.eval()
    with torch.no_grad():
        losses = [loss_fn(net, images, None, generator).mean() for _ in range(4)]
    return float(torch.stack(losses).mean())


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")  # 8x8 grayscale, 1797 images
    return data.subset(data.ids[:512]), data.subset(data.ids[1024:1280])


@pytest.mark.parametrize(
    "objective,schedule", [("ddpm", "linear"), ("flow", None)], ids=["ddpm-eps", "flow"]
)
def test_expert_learns_the_data(tmp_path, digits, objective, schedule):
    torch.set_num_threads(2)
    train_set, held_out = digits
    settings = ExpertSettings(
        objective=objective,
        schedule=schedule,
        model="tiny",
        class_conditional=False,
        steps=STEPS,
        batch_size=32,
        lr=2e-3,
        warmup_steps=20,
        checkpoint_every=10_000,
        progress=False,
    )
    checkpoint = train_expert(train_set, settings, tmp_path / objective)

    initial, _ = build_expert_net(settings, train_set)
    trained, spec = load_expert_model(checkpoint)
    assert spec.steps == STEPS and spec.objective == objective
    loss_before = held_out_loss(initial, settings, held_out.images)
    loss_after = held_out_loss(trained, settings, held_out.images)
    assert loss_after < 0.6 * loss_before, (loss_before, loss_after)

    velocity, _ = load_velocity_model(checkpoint)
    samples = generate(velocity, (1, 8, 8), seeds=list(range(256)), steps=20)
    noise = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    to_samples = image_statistics_distance(samples, held_out.images)
    to_noise = image_statistics_distance(noise, held_out.images)
    # measured: samples ~0.25, another slice of the data ~0.2, noise ~1.1
    assert to_samples < 0.35 * to_noise, (to_samples, to_noise)


def test_gradient_checkpointing_trains_the_same_expert(tmp_path, digits, monkeypatch):
    """``gradient_checkpointing`` recomputes activations; the trained weights stay the same
    (bitwise on the CPU, where the recomputation repeats the same kernels)."""
    import hetdiff.training.expert as expert_module

    wrapped = []
    enable = expert_module.enable_gradient_checkpointing
    monkeypatch.setattr(expert_module, "enable_gradient_checkpointing",
                        lambda net: wrapped.append(enable(net)))  # fmt: skip
    train_data = digits[0].subset(digits[0].ids[:64])
    states = []
    for flag in (False, True):
        settings = ExpertSettings(steps=4, batch_size=16, checkpoint_every=4, progress=False,
                                  gradient_checkpointing=flag)  # fmt: skip
        path = train_expert(train_data, settings, tmp_path / f"expert-{flag}")
        states.append(load_expert_model(path)[0].state_dict())
    assert wrapped == [4]  # the tiny DiT's 4 blocks, in the second run only
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
