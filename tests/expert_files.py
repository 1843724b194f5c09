"""Small expert checkpoints for the conversion, fine-tuning and CLI tests (importable because
pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch

from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import save_expert
from hetdiff.models.dit import DiT, DiTConfig

CONFIG = DiTConfig(input_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=2,
                   num_heads=2, num_classes=10, learned_sigma=True)  # fmt: skip


def write_ddpm_expert(path, objective="ddpm", prediction="eps", seed=0, config=CONFIG):
    """A small random DiT expert of the digits data (8 px, 10 classes), non-zero output."""
    torch.manual_seed(seed)
    net = DiT(config)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    ddpm = objective == "ddpm"
    spec = ExpertSpec(
        objective=objective,
        prediction=prediction,
        schedule={"name": "cosine"} if ddpm else None,
        learned_variance=config.learned_sigma,
        model={"arch": "dit", "name": "test", **config.to_dict()},
        cluster_id=1,
        num_clusters=2,
        data_spec="digits",
        resolution=8,
        channels=1,
        num_classes=10,
        steps=123,
    )
    save_expert(path, net.state_dict(), spec)
    return path


def probe_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 8, 8, generator=gen)
    t = torch.linspace(0.05, 0.9, 8)
    labels = torch.tensor([0, 1, 2, 3, -1, 5, 6, 9])
    return x, t, labels
