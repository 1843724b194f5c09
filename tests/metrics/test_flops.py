"""FLOP counts against numbers counted by hand (2 FLOPs per multiply-add)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hetdiff.errors import HetdiffError
from hetdiff.metrics.flops import attention_flops, forward_flops, solver_nfe, strategy_flops
from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.sampling.solvers import solve

# 8x8 grayscale, patch 2 -> N = 16 tokens of width D = 16, 2 heads, MLP width 4 D = 64.
TINY = DiTConfig(input_size=8, in_channels=1, patch_size=2, hidden_size=16, depth=1, num_heads=2)

# One sample through TINY, by hand:
#   patch conv    2 N D (C P P)        = 2 * 16 * 16 * 4    =  2048
#   t MLP         2 (256 D + D D)      = 8192 + 512          =  8704
#   t_block       2 D (6 D)            = 2 * 16 * 96         =  3072
#   per block:    qkv   2 N D (3 D)    = 2 * 16 * 16 * 48    = 24576
#                 attn  2 N N D * 2    = 4 * 16 * 16 * 16    = 16384
#                 proj  2 N D D        = 2 * 16 * 16 * 16    =  8192
#                 mlp   2 N D (4 D) * 2 = 2 * (2 * 16 * 16 * 64) = 65536   -> block 114688
#   final linear  2 N D (P P C_out)    = 2 * 16 * 16 * 4     =  2048
TINY_FLOPS = 2048 + 8704 + 3072 + 114688 + 2048  # = 130560


def _tiny_forward_flops(config: DiTConfig, batch: int) -> int:
    model = DiT(config).eval()
    x = torch.zeros(batch, config.in_channels, config.input_size, config.input_size)
    return forward_flops(lambda: model(x, torch.zeros(batch)))


def test_linear_conv_and_attention_counts():
    assert forward_flops(lambda: nn.Linear(3, 5)(torch.zeros(4, 3))) == 2 * 4 * 3 * 5
    conv = nn.Conv2d(1, 16, kernel_size=2, stride=2)
    assert forward_flops(lambda: conv(torch.zeros(1, 1, 8, 8))) == 2048
    q = torch.zeros(2, 3, 5, 4)  # (B, heads, N, d)
    k, v = torch.zeros(2, 3, 7, 4), torch.zeros(2, 3, 7, 6)
    assert attention_flops(q.shape, k.shape, v.shape) == 2 * 2 * 3 * 5 * 7 * (4 + 6) == 4200
    # torch's counter alone misses attention on the CPU; ours counts it
    assert forward_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 4200
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    assert forward_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) == 4200


def test_forward_flops_of_a_tiny_dit_match_the_hand_count():
    assert TINY_FLOPS == 130560
    assert _tiny_forward_flops(TINY, batch=1) == 130560
    assert _tiny_forward_flops(TINY, batch=3) == 3 * 130560


def test_forward_flops_grow_by_one_block_and_by_the_variance_channels():
    # depth 2 adds one block (114688); learned sigma doubles C_out: final linear 2048 -> 4096
    deeper = DiTConfig(**{**TINY.to_dict(), "depth": 2, "learned_sigma": True})
    assert _tiny_forward_flops(deeper, batch=1) == 130560 + 114688 + 2048 == 247296
    # class labels are a table look-up: no FLOPs
    classes = DiTConfig(**{**TINY.to_dict(), "num_classes": 10})
    assert _tiny_forward_flops(classes, batch=1) == 130560


@pytest.mark.parametrize(
    "solver, steps, nfe", [("euler", 10, 10), ("heun", 10, 19), ("heun", 1, 1)]
)
def test_solver_nfe_counts_the_velocity_calls_of_the_solver(solver, steps, nfe):
    calls = []

    def velocity(x, t, cond):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    solve(velocity, torch.zeros(2, 1, 4, 4), steps=steps, solver=solver)
    assert solver_nfe(solver, steps) == nfe == len(calls)


def test_solver_nfe_refuses_unknown_solvers_and_bad_steps():
    with pytest.raises(HetdiffError, match="unknown solver 'rk4'"):
        solver_nfe("rk4", 10)
    with pytest.raises(HetdiffError, match="positive integer"):
        solver_nfe("euler", 0)


def test_strategy_flops_per_sample():
    flops = strategy_flops([100, 300, 200], router_flops=10, nfe=3, top_k=2)
    assert flops == {
        "full": 3 * (10 + 600),  # router + every expert
        "top-k": 3 * (10 + 300 + 200),  # router + the 2 most expensive experts
        "top1": 3 * (10 + 200),  # router + the mean expert
        "sample": 3 * (10 + 200),
        "single-expert": 3 * 200,
    }
    assert strategy_flops([50], router_flops=0, nfe=1, top_k=4)["top-k"] == 50
    with pytest.raises(HetdiffError, match="at least one expert"):
        strategy_flops([], router_flops=10, nfe=3)


def test_nucleus_flops_come_from_the_measured_expert_usage():
    # per evaluation: expert 0 on every row, expert 1 on half, expert 2 on a quarter
    usage = {"nucleus": [1.0, 0.5, 0.25]}
    flops = strategy_flops([100, 300, 200], router_flops=10, nfe=3, top_k=2, measured=usage)
    assert flops["nucleus"] == 3 * (10 + 100 + 150 + 50)
    assert {k: v for k, v in flops.items() if k != "nucleus"} == strategy_flops(
        [100, 300, 200], router_flops=10, nfe=3, top_k=2
    )  # the other strategies are counted as before
    assert "nucleus" not in strategy_flops([100], router_flops=0, nfe=1)  # not measured
    with pytest.raises(HetdiffError, match="expert usage has 2 entries for 3 experts"):
        strategy_flops([100, 300, 200], 10, 3, measured={"nucleus": [1.0, 1.0]})
