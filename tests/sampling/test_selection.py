"""Expert selection from router weights: hand-made weight tensors with known kept sets and
renormalized shares (nucleus, top-k), the one stable tie order every prefix strategy shares, at
least one expert always kept, and refusals."""

from __future__ import annotations

import pytest
import torch

from hetdiff.errors import HetdiffError
from hetdiff.sampling.selection import (
    nucleus_choice,
    nucleus_sizes,
    rank_experts,
    sample_choice,
    top_k_choice,
)

# rows: peaked, a two-way split, flat, ties in the tail, graded
WEIGHTS = torch.tensor(
    [
        [0.05, 0.90, 0.03, 0.02],
        [0.45, 0.05, 0.45, 0.05],
        [0.25, 0.25, 0.25, 0.25],
        [0.10, 0.10, 0.75, 0.05],
        [0.40, 0.30, 0.20, 0.10],
    ],
    dtype=torch.float64,
)


def test_nucleus_keeps_the_fewest_largest_weights_reaching_top_p():
    choice, share = nucleus_choice(WEIGHTS, 0.8)
    # kept sets by hand: 0.90 >= 0.8; 0.45 + 0.45 = 0.9; four ties of 0.25 (0.75 < 0.8 after 3);
    # 0.75 then the lower column of the tied 0.10s (0.85); 0.4 + 0.3 + 0.2 (0.7 < 0.8 after 2).
    # (No row sits on the boundary: there "reaches top_p" is decided by float64 rounding.)
    expected = [[1], [0, 2], [0, 1, 2, 3], [2, 0], [0, 1, 2]]
    assert nucleus_sizes(WEIGHTS, 0.8).tolist() == [len(kept) for kept in expected]
    assert choice.shape == (5, 4) and share.shape == (5, 4)
    for row, kept in enumerate(expected):
        assert choice[row, : len(kept)].tolist() == kept
        assert (choice[row, len(kept) :] == -1).all() and (share[row, len(kept) :] == 0).all()
        kept_weights = WEIGHTS[row, kept]
        assert torch.allclose(share[row, : len(kept)], kept_weights / kept_weights.sum())
    assert torch.allclose(share.sum(dim=1), torch.ones(5, dtype=torch.float64))


def test_nucleus_limits():
    # top_p = 1 keeps every expert (each has weight > 0); a tiny top_p keeps exactly one
    assert nucleus_sizes(WEIGHTS, 1.0).tolist() == [4] * 5
    choice, share = nucleus_choice(WEIGHTS, 1e-9)
    top1, top1_share = top_k_choice(WEIGHTS, 1)
    assert torch.equal(choice, top1) and torch.equal(share, top1_share)
    assert (share == 1).all()
    # at least one expert, even when the top weight alone is below top_p by rounding
    one_hot = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    assert nucleus_sizes(one_hot, 1.0).tolist() == [1]
    assert nucleus_choice(one_hot, 1.0)[0].tolist() == [[1]]


def test_every_prefix_strategy_breaks_ties_by_the_lower_column():
    flat = torch.full((3, 5), 0.2, dtype=torch.float32)
    assert rank_experts(flat).tolist() == [[0, 1, 2, 3, 4]] * 3
    assert top_k_choice(flat, 2)[0].tolist() == [[0, 1]] * 3
    assert nucleus_choice(flat, 0.5)[0].tolist() == [[0, 1, 2]] * 3  # 0.4 < 0.5 after two
    tied_top = torch.tensor([[0.1, 0.45, 0.45]])
    assert nucleus_choice(tied_top, 0.3)[0].tolist() == top_k_choice(tied_top, 1)[0].tolist()
    assert nucleus_choice(tied_top, 0.3)[0].tolist() == [[1]]


def test_top_k_renormalizes_and_sample_draws_one():
    choice, share = top_k_choice(WEIGHTS, 2)
    assert choice.tolist() == [[1, 0], [0, 2], [0, 1], [2, 0], [0, 1]]
    assert torch.allclose(share[4], torch.tensor([4 / 7, 3 / 7], dtype=torch.float64))
    drawn, ones = sample_choice(WEIGHTS, torch.Generator().manual_seed(0))
    assert drawn.shape == (5, 1) and (ones == 1).all()
    again, _ = sample_choice(WEIGHTS, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)


def test_refusals():
    with pytest.raises(HetdiffError, match=r"nucleus needs top_p in \(0, 1\], got 0"):
        nucleus_choice(WEIGHTS, 0)
    with pytest.raises(HetdiffError, match=r"nucleus needs top_p in \(0, 1\], got 1.5"):
        nucleus_sizes(WEIGHTS, 1.5)
    with pytest.raises(HetdiffError, match="top-k needs 1 <= k <= 4, got k=5"):
        top_k_choice(WEIGHTS, 5)
