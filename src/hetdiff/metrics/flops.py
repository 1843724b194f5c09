"""Forward FLOPs per generated sample, per ensemble strategy, counted with torch's FlopCounter.

One network evaluation (NFE) of strategy s costs router + (experts it runs):
full: all K experts; top-k: k experts; top1 and sample: one expert. A sample costs
NFE x that, with NFE = steps (Euler) or 2 steps - 1 (Heun; the last step is Euler).
nucleus runs a data-dependent number of experts, so its cost is measured while sampling: with
u_j the mean evaluations of expert j per sample per NFE (``Ensemble.expert_usage``; sum_j u_j is
the mean nucleus size), one NFE costs router + sum_j u_j FLOPs_j.

Counted: matrix products and convolutions (2 FLOPs per multiply-add) and attention. torch counts
``scaled_dot_product_attention`` only through its CUDA kernels; on the CPU it runs
``_scaled_dot_product_flash_attention_for_cpu``, which we count with the same formula, so a
model costs the same number of FLOPs on either device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from hetdiff.config import SOLVERS
from hetdiff.errors import HetdiffError


def attention_flops(
    query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int]
) -> int:
    """FLOPs of softmax(q k^T / sqrt(d)) v for q (B, h, N, d), k (B, h, M, d), v (B, h, M, d_v):
    2 B h N M d (scores) + 2 B h N M d_v (weighted sum); the softmax is not counted."""
    batch, heads, n_query, d_query = query_shape
    n_key = key_shape[2]
    d_value = value_shape[3]
    return 2 * batch * heads * n_query * n_key * (d_query + d_value)


def _cpu_attention_flops(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    return attention_flops(query_shape, key_shape, value_shape)


_CPU_ATTENTION = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_EXTRA_FORMULAS = {} if _CPU_ATTENTION is None else {_CPU_ATTENTION: _cpu_attention_flops}


def forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn``: matmuls, convolutions and attention, as in the module doc."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        fn()
    return int(counter.get_total_flops())


def solver_nfe(solver: str, steps: int) -> int:
    """Network evaluations per sample: ``steps`` for Euler, ``2 steps - 1`` for Heun (its last
    step, to t = 0, is an Euler step)."""
    if solver not in SOLVERS:
        raise HetdiffError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if int(steps) != steps or steps < 1:
        raise HetdiffError(f"steps must be a positive integer, got {steps!r}")
    return 2 * steps - 1 if solver == "heun" else steps


def strategy_flops(
    expert_flops: Sequence[int],
    router_flops: int,
    nfe: int,
    top_k: int = 2,
    measured: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """FLOPs per sample for each strategy. Top1/sample use the mean expert cost (the expected
    cost when the router spreads samples over experts of different sizes); top-k counts the k
    most expensive experts (an upper bound). ``measured`` maps a strategy (nucleus) to the
    expert usage u (K,) measured while it sampled, in the order of ``expert_flops``; its cost is
    nfe * (router + sum_j u_j FLOPs_j). A strategy with a data-dependent cost and no measured
    usage is left out."""
    if not expert_flops:
        raise HetdiffError("strategy_flops needs the FLOPs of at least one expert")
    mean_expert = sum(expert_flops) / len(expert_flops)
    top = sorted(expert_flops, reverse=True)[:top_k]
    flops = {
        "full": nfe * (router_flops + sum(expert_flops)),
        "top-k": nfe * (router_flops + sum(top)),
        "top1": nfe * (router_flops + mean_expert),
        "sample": nfe * (router_flops + mean_expert),
        "single-expert": nfe * mean_expert,
    }
    for name, usage in (measured or {}).items():
        if len(usage) != len(expert_flops):
            raise HetdiffError(
                f"{name}: expert usage has {len(usage)} entries for {len(expert_flops)} experts; "
                "sample it again with these experts"
            )
        used = sum(float(u) * f for u, f in zip(usage, expert_flops, strict=True))
        flops[name] = nfe * (router_flops + used)
    return flops
