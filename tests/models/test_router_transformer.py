"""The transformer router: AdaLN-Single DiT blocks + a pooled head. Tiny instances only (the
DiT-B/2 size is counted on the meta device); it learns a toy routing task; the router store
keeps it (arch "transformer") beside FiLM routers, old specs without an arch still load."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from hetdiff.conditioning import Conditioning
from hetdiff.errors import HetdiffError
from hetdiff.experts.router_store import RouterSpec, load_router, read_router_spec, save_router
from hetdiff.models.router import Router, RouterConfig
from hetdiff.models.router_transformer import (
    TRANSFORMER_ROUTER_CONFIGS,
    TransformerRouter,
    parameter_count,
    transformer_router_config,
)

TINY = transformer_router_config("tiny", num_clusters=3, resolution=8, channels=1)


def perturbed(config, seed=0):
    torch.manual_seed(seed)
    router = TransformerRouter(config)
    for param in router.parameters():
        param.data.normal_(0, 0.1)
    return router.eval()


def test_untrained_router_is_uniform_and_shapes_hold():
    router = TransformerRouter(TINY)
    logits = router(torch.randn(5, 1, 8, 8), torch.rand(5))
    assert logits.shape == (5, 3) and torch.equal(logits, torch.zeros(5, 3))
    assert router(torch.randn(2, 1, 8, 8), 0.5).shape == (2, 3)  # scalar t


def test_conditions_change_the_logits_and_null_is_learned():
    classes = perturbed(dataclasses.replace(TINY, num_classes=4))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.3])
    a = classes(x, t, torch.tensor([0, 1]))
    b = classes(x, t, torch.tensor([2, 3]))
    null = classes(x, t, None)
    assert not torch.allclose(a, b) and torch.equal(null, classes(x, t, torch.tensor([-1, -1])))
    text = perturbed(dataclasses.replace(TINY, context_dim=6))
    context = torch.randn(2, 3, 6)
    full = text(x, t, Conditioning(context=context))
    masked = text(
        x, t, Conditioning(context=context, context_mask=torch.zeros(2, 3, dtype=torch.bool))
    )
    assert not torch.allclose(full, masked) and torch.allclose(masked, text(x, t, None))
    with pytest.raises(HetdiffError, match=r"router class labels must be in \[0, 4\)"):
        classes(x, t, torch.tensor([0, 4]))
    with pytest.raises(HetdiffError, match=r"router expects x of shape \(B, 1, 8, 8\)"):
        classes(torch.randn(2, 1, 16, 16), t)


def test_named_sizes_and_the_dit_b_router_of_about_129m():
    assert parameter_count(TINY) == sum(p.numel() for p in TransformerRouter(TINY).parameters())
    big = transformer_router_config("DiT-B/2", num_clusters=8, resolution=32, channels=4)
    count = parameter_count(big)
    print(f"DiT-B/2 router: {count / 1e6:.1f}M parameters")
    assert 127e6 < count < 131e6
    single = transformer_router_config("DiT-B/2-single", num_clusters=8, resolution=32, channels=4)
    assert parameter_count(single) < count  # AdaLN-Single drops 5/6 of the modulation weights
    assert set(TRANSFORMER_ROUTER_CONFIGS) >= {"tiny", "DiT-B/2"}
    for bad, match in (
        (dict(resolution=9), "not divisible by patch_size"),
        (dict(num_heads=3), "divisible by num_heads"),
        (dict(modulation="film"), "unknown modulation"),
        (dict(num_clusters=1), "num_clusters >= 2"),
    ):
        with pytest.raises(HetdiffError, match=match):
            dataclasses.replace(TINY, **bad)
    with pytest.raises(HetdiffError, match="unknown transformer router 'DiT-Q'"):
        transformer_router_config("DiT-Q", num_clusters=2, resolution=8, channels=1)


def test_it_learns_which_cluster_a_noisy_image_came_from():
    """Cluster k of a toy set has mean image (k - 1); at t = 0.3 the router separates them."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    router = TransformerRouter(TINY)
    optimizer = torch.optim.Adam(router.parameters(), lr=3e-3)
    for _ in range(60):
        k = torch.randint(0, 3, (32,), generator=gen)
        x0 = (k - 1).float()[:, None, None, None] + 0.1 * torch.randn(32, 1, 8, 8, generator=gen)
        x_t = 0.7 * x0 + 0.3 * torch.randn(32, 1, 8, 8, generator=gen)
        loss = torch.nn.functional.cross_entropy(router(x_t, torch.full((32,), 0.3)), k)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"toy routing cross-entropy after 60 steps: {loss.item():.3f} (uniform {1.0986:.3f})")
    assert loss.item() < 0.3


def test_router_store_keeps_the_arch_and_reads_old_specs(tmp_path):
    router = perturbed(TINY)
    spec = RouterSpec.for_config(TINY, "abc123", steps=7)
    assert spec.arch == "transformer"
    (tmp_path / "t").mkdir()
    save_router(tmp_path / "t", router.state_dict(), spec)
    loaded, spec2 = load_router(tmp_path / "t")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.9])
    assert isinstance(loaded, TransformerRouter) and spec2 == spec
    assert torch.equal(loaded(x, t), router(x, t))
    film = RouterSpec.for_config(RouterConfig(num_clusters=3, resolution=8, channels=1), "abc123")
    assert film.arch == "film"
    old = json.loads(film.to_json())
    del old["arch"]  # a spec written before the field existed
    assert RouterSpec.from_json(json.dumps(old)) == film
    (tmp_path / "f").mkdir()
    save_router(tmp_path / "f", Router(film.config).state_dict(), film)
    assert read_router_spec(tmp_path / "f").arch == "film"
    with pytest.raises(HetdiffError, match="unknown router arch 'unet'"):
        RouterSpec.from_json(json.dumps({**old, "arch": "unet"}))
    with pytest.raises(HetdiffError, match="unknown transformer router keys"):
        RouterSpec.from_json(json.dumps({**old, "arch": "transformer"}))
