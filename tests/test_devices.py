"""The paths that touch a device, run on ``HETDIFF_TEST_DEVICE`` (default cpu).

The default suite runs them on the CPU; ``benchmarks/gpu_check.sh`` runs this file with
``HETDIFF_TEST_DEVICE=cuda``. Asking for a device that is not there fails (it never skips), so a
GPU check cannot pass without a GPU.

Each test compares the device against a float64 CPU reference: the DiT forward (float32 and bf16
autocast), gradient checkpointing (same gradients), the velocity adapters of every objective,
CFG-guided top-1 and full ensemble sampling, and a few real training steps of an expert through
``train_expert`` (mixed precision "auto": bf16 on a CUDA device that supports it).
"""

from __future__ import annotations

import os

import pytest
import torch

from hetdiff.conditioning import Conditioning
from hetdiff.models.checkpointing import enable_gradient_checkpointing
from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.models.router import Router, RouterConfig
from hetdiff.objectives.schedules import make_schedule
from hetdiff.objectives.velocity import DDPMVelocity, FlowVelocity
from hetdiff.sampling.ensemble import Ensemble
from hetdiff.sampling.guidance import guided
from hetdiff.sampling.solvers import solve

CONFIG = DiTConfig(input_size=8, in_channels=2, hidden_size=64, depth=3, num_heads=4, num_classes=5)


@pytest.fixture(scope="module")
def device() -> torch.device:
    name = os.environ.get("HETDIFF_TEST_DEVICE", "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"HETDIFF_TEST_DEVICE={name} but torch sees no CUDA device")
    torch.empty(1, device=dev)  # fails here, naming the device, if it cannot be used
    # float32 math is compared to float64: no TF32 (cuDNN convolutions use it by default)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return dev


def _model(seed: int, **overrides) -> DiT:
    torch.manual_seed(seed)
    net = DiT(DiTConfig(**{**CONFIG.__dict__, **overrides}))
    for p in net.parameters():  # nonzero everywhere (zero-initialized heads would output 0)
        p.data.normal_(0, 0.05)
    return net


def _inputs(batch: int = 6, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CONFIG.in_channels, 8, 8, generator=gen)
    t = torch.rand(batch, generator=gen)
    labels = torch.randint(0, CONFIG.num_classes, (batch,), generator=gen)
    return x, t, labels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def test_dit_forward_on_device_matches_float64(device):
    net = _model(0)
    x, t, labels = _inputs()
    reference = net.double()(x.double(), t.double() * 1000, labels)
    net = net.float().to(device)
    with torch.no_grad():
        out = net(x.to(device), t.to(device) * 1000, labels.to(device))
    assert out.device.type == device.type
    assert _rel(out, reference) < 1e-5
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            low = net(x.to(device), t.to(device) * 1000, labels.to(device))
        assert _rel(low.float(), reference) < 3e-2


def test_gradient_checkpointing_keeps_gradients_and_state_dict(device):
    x, t, labels = _inputs()
    grads = []
    for checkpointed in (False, True):
        net = _model(0).to(device)
        keys = list(net.state_dict())
        if checkpointed:
            assert enable_gradient_checkpointing(net) == CONFIG.depth
            assert enable_gradient_checkpointing(net) == 0  # idempotent
        assert list(net.state_dict()) == keys
        out = net(x.to(device), t.to(device) * 1000, labels.to(device))
        out.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert _rel(grads[1], grads[0]) < 1e-6
    assert enable_gradient_checkpointing(net, enabled=False) == CONFIG.depth


def _experts():
    kinds = [None, ("linear", "eps"), ("cosine", "v"), ("scaled_linear", "x0")]
    experts = []
    for j, kind in enumerate(kinds):
        net = _model(10 + j).eval()
        if kind is None:
            experts.append(FlowVelocity(net))
        else:
            experts.append(DDPMVelocity(net, make_schedule(kind[0]), kind[1]))
    return experts


def test_velocity_adapters_on_device_match_float64(device):
    x, t, labels = _inputs()
    t = t.clamp(0.05, 0.95)
    for expert in _experts():
        reference = expert.double()(x.double(), t.double(), labels)
        expert = expert.float().to(device)
        with torch.no_grad():
            out = expert(x.to(device), t.to(device), labels.to(device))
        assert _rel(out, reference) < 1e-4, type(expert).__name__


@pytest.mark.parametrize("strategy", ["top1", "full"])
def test_guided_ensemble_sampling_on_device_matches_cpu(device, strategy):
    torch.manual_seed(3)
    router = Router(RouterConfig(num_clusters=4, resolution=8, channels=2, num_classes=5))
    for p in router.parameters():  # a trained-like router: the zero-initialized head is uniform
        p.data.normal_(0, 0.3)
    experts = _experts()
    noise, _, labels = _inputs(batch=8, seed=5)

    def run(dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
        ensemble = Ensemble(experts, [0, 1, 2, 3], router, 4, strategy=strategy)
        ensemble = ensemble.to(dev, dtype)
        velocity = guided(ensemble, 2.0)
        cond = Conditioning(class_labels=labels.to(dev))
        return solve(velocity, noise.to(dev, dtype), 6, ensemble.t_range, "heun", cond=cond)

    reference = run(torch.device("cpu"), torch.float64)
    out = run(device, torch.float32)
    assert out.device.type == device.type
    assert torch.isfinite(out).all()
    error = _rel(out, reference)
    print(f"{strategy}: relative error {error:.2e} on {device}")
    assert error < 1e-4


def test_training_steps_on_device(device, tmp_path):
    """A few real steps of ``train_expert`` run on the device the Accelerator picks."""
    from hetdiff.config import ExpertSettings
    from hetdiff.data.datasets import load_dataset
    from hetdiff.experts.store import load_expert_model
    from hetdiff.training.expert import train_expert

    if device.type != ("cuda" if torch.cuda.is_available() else "cpu"):
        pytest.fail(f"the Accelerator would train on another device than {device}")
    dataset = load_dataset("digits", resolution=8)
    settings = ExpertSettings(steps=6, batch_size=16, checkpoint_every=3, progress=False)
    path = train_expert(dataset, settings, tmp_path / "expert")
    net, spec = load_expert_model(path)
    assert spec.objective == "flow"
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_top1_ties_pick_the_lowest_cluster_on_every_device(device):
    """An untrained router (zero head) ties every expert: top1 takes the first, on any device."""
    router = Router(RouterConfig(num_clusters=4, resolution=8, channels=2, num_classes=5))
    ensemble = Ensemble(_experts(), [0, 1, 2, 3], router, 4, strategy="top1").to(device)
    x, t, labels = _inputs(batch=64)
    weights = ensemble.weights(x.to(device), t.to(device), labels.to(device))
    assert torch.equal(weights, torch.full_like(weights, 0.25))
    choice, chosen = ensemble.choose(weights)
    assert choice.unique().tolist() == [0] and torch.equal(chosen, torch.ones_like(chosen))
