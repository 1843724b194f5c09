"""The router network: shapes and conditioning, null conditions, size, config validation."""

from __future__ import annotations

import pytest
import torch

from hetdiff.conditioning import Conditioning
from hetdiff.errors import HetdiffError
from hetdiff.models.router import Router, RouterConfig


def test_router_shapes_and_null_conditions():
    torch.manual_seed(0)
    router = Router(RouterConfig(3, 28, 1, num_classes=5, context_dim=6))
    for p in router.parameters():  # zero-initialized heads would hide every input
        p.data.normal_(0, 0.3)
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    labels = torch.tensor([0, 4, -1, 2])
    context, mask = torch.randn(4, 3, 6), torch.tensor([[1, 1, 0]] * 3 + [[0, 0, 0]]).bool()
    logits = router(x, t, Conditioning(labels, context, mask))
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    # -1 is the null class, the same as giving no labels; an all-False mask is the null text
    null = router(
        x,
        t,
        Conditioning(
            torch.full((4,), -1), torch.zeros(4, 3, 6), torch.zeros(4, 3, dtype=torch.bool)
        ),
    )
    assert torch.allclose(null, router(x, t, None), atol=1e-6)
    assert torch.allclose(logits[3], router(x[3:], t[3:], Conditioning(labels[3:]))[0], atol=1e-6)
    # labels, time and image all change the answer
    assert not torch.allclose(logits, router(x, t, Conditioning(labels.flip(0), context, mask)))
    assert not torch.allclose(router(x, t), router(x, 1 - t))
    assert not torch.allclose(router(x, t), router(-x, t))
    assert router(x, 0.5).shape == (4, 3)  # scalar t
    plain = Router(RouterConfig(3, 28, 1))  # an unconditional router ignores conditions
    assert torch.equal(plain(x, t, Conditioning(labels, context, mask)), plain(x, t))
    with pytest.raises(HetdiffError, match=r"router expects x of shape \(B, 1, 28, 28\)") as err:
        router(torch.randn(2, 3, 28, 28), torch.rand(2))
    assert "\n" not in str(err.value)
    with pytest.raises(HetdiffError, match="router class labels must be in"):
        router(x, t, Conditioning(torch.tensor([0, 5, 1, 1])))


def test_router_is_much_smaller_than_an_expert():
    from hetdiff.models.dit import build_dit

    router = Router(RouterConfig(8, 28, 1))
    n_router = sum(p.numel() for p in router.parameters())
    n_expert = sum(p.numel() for p in build_dit("tiny").parameters())
    assert n_router < 0.3 * n_expert, (n_router, n_expert)


def test_config_validation_is_one_line():
    for kwargs, message in [
        (dict(num_clusters=1), "num_clusters >= 2"),
        (dict(hidden=12), "multiple of 8"),
        (dict(depth=0), "depth must be a positive integer"),
    ]:
        with pytest.raises(HetdiffError, match=message) as err:
            RouterConfig(**{"num_clusters": 4, "resolution": 28, "channels": 1, **kwargs})
        assert "\n" not in str(err.value)
    with pytest.raises(HetdiffError, match="unknown RouterConfig keys"):
        RouterConfig.from_dict({"num_clusters": 4, "resolution": 28, "channels": 1, "width": 3})


def test_config_dict_round_trip_and_conditioning():
    config = RouterConfig(4, 8, 1, hidden=16, num_classes=3)
    assert RouterConfig.from_dict(config.to_dict()) == config
    assert config.conditioning == "class"
    assert RouterConfig(4, 8, 1).conditioning == "none"
    assert RouterConfig(4, 8, 1, context_dim=32).conditioning == "text"
