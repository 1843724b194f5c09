from __future__ import annotations

import pytest
import torch
from torch import nn

from hetdiff.errors import HetdiffError
from hetdiff.training.ema import EMA


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_warmup_decay_values():
    ema = EMA(_net(), decay=0.999, warmup=True)
    expected = []
    for n in range(4):
        expected.append((1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(expected[-1])
        ema.num_updates += 1
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999
    assert EMA(_net(), decay=0.5, warmup=False).current_decay() == 0.5


def test_update_matches_float64_reference_and_copies_buffers():
    net = _net()
    ema = EMA(net, decay=0.9, warmup=True)
    weight = net[0].weight
    reference = weight.detach().double().clone()
    for n in range(5):
        with torch.no_grad():
            weight.add_(torch.randn_like(weight))
            net[1].running_mean.add_(1.0)
        ema.update(net)
        d = min(0.9, (1 + n) / (10 + n))
        reference = d * reference + (1 - d) * weight.detach().double()
    torch.testing.assert_close(ema.state_dict()["0.weight"].double(), reference, rtol=0, atol=1e-6)
    # Buffers are copied, not averaged: the EMA's running mean equals the model's.
    assert torch.equal(ema.state_dict()["1.running_mean"], net[1].running_mean)
    assert ema.num_updates == 5


def test_copy_to_and_state_round_trip():
    net = _net()
    ema = EMA(net, decay=0.5, warmup=False)
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    ema.update(net)
    other = EMA(_net(), decay=0.5, warmup=False)
    other.load_state_dict({k: v.clone() for k, v in ema.state_dict().items()}, ema.num_updates)
    target = _net()
    other.copy_to(target)
    for name, value in target.state_dict().items():
        assert torch.equal(value, ema.state_dict()[name]), name
    assert other.num_updates == 1
    assert not torch.equal(target[0].weight, net[0].weight)  # averaged, not copied


def test_load_state_dict_rejects_other_architecture():
    ema = EMA(_net())
    with pytest.raises(HetdiffError, match="missing"):
        ema.load_state_dict({"0.weight": torch.zeros(4, 3)}, 0)
    with pytest.raises(HetdiffError, match="decay"):
        EMA(_net(), decay=1.5)
