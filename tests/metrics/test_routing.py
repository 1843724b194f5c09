"""Router accuracy per t-bucket, measured on routers whose answer is known: an oracle that
reads the quadrant of x_t, a router that reads the class label, and the one-line refusal of a
text router measured without its encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hetdiff.conditioning import as_conditioning
from hetdiff.errors import HetdiffError
from hetdiff.metrics.routing import RouterAccuracy, router_accuracy_by_t
from hetdiff.models.router import Router, RouterConfig
from router_data import label_decided_data, quadrant_data


class QuadrantOracle(nn.Module):
    """Logits = 20 x the mean of each 4x4 quadrant of x_t: the cluster of the quadrant data."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        means = F.avg_pool2d(x, 4).flatten(1)  # (B, 4): quadrants in row-major order
        return self.scale * means


class LabelReader(nn.Module):
    """A class-conditional 'router' whose logits are one-hot of label // 2 (K = 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = RouterConfig(2, 8, 1, num_classes=4)
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        labels = as_conditioning(cond).class_labels
        return 20.0 * F.one_hot(labels // 2, 2).float() + self.bias


def test_oracle_accuracy_falls_with_noise_and_entropy_rises():
    dataset, partition = quadrant_data()
    oracle = QuadrantOracle().train()
    table = router_accuracy_by_t(oracle, dataset, partition, buckets=5, n=400, seed=1)
    assert all(isinstance(row, RouterAccuracy) for row in table)
    assert [round(row.t_lo, 2) for row in table] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert [round(row.t_hi, 2) for row in table] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(row.prior_accuracy == pytest.approx(0.4) for row in table)
    assert table[0].accuracy == 1.0 and table[-1].accuracy < 0.9
    assert table[0].entropy < table[-1].entropy
    assert oracle.training  # the router's mode is restored
    again = router_accuracy_by_t(oracle, dataset, partition, buckets=5, n=400, seed=1)
    assert again == table  # seeded: the same subset, t and noise


def test_conditional_router_gets_the_labels_of_the_rows():
    dataset, partition = label_decided_data(seed=1)
    table = router_accuracy_by_t(LabelReader(), dataset, partition, buckets=2, n=100)
    assert [row.accuracy for row in table] == [1.0, 1.0]  # the cluster is label // 2, at any t
    assert table[0].prior_accuracy < 0.6


def test_text_router_needs_its_encoder():
    dataset, partition = label_decided_data(seed=2)
    router = Router(RouterConfig(2, 8, 1, context_dim=32))
    with pytest.raises(HetdiffError, match="pass the text_encoder of its spec") as err:
        router_accuracy_by_t(router, dataset, partition, buckets=2, n=16)
    assert "\n" not in str(err.value)
