"""Forward FLOPs per generated sample, per ensemble strategy, counted with torch's FlopCounter.

One network evaluation (NFE) of strategy s costs router + (experts it runs):
full: all K experts; top-k: k experts; top1 and sample: one expert. A sample costs
NFE x that, with NFE = steps (Euler) or 2 steps - 1 (Heun; the last step is Euler).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, as torch counts them)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def solver_nfe(solver: str, steps: int) -> int:
    return 2 * steps - 1 if solver == "heun" else steps


def strategy_flops(
    expert_flops: Sequence[int], router_flops: int, nfe: int, top_k: int = 2
) -> dict[str, float]:
    """FLOPs per sample for each strategy. Top1/sample use the mean expert cost (the expected
    cost when the router spreads samples over experts of different sizes)."""
    mean_expert = sum(expert_flops) / len(expert_flops)
    top = sorted(expert_flops, reverse=True)[:top_k]
    return {
        "full": nfe * (router_flops + sum(expert_flops)),
        "top-k": nfe * (router_flops + sum(top)),
        "top1": nfe * (router_flops + mean_expert),
        "sample": nfe * (router_flops + mean_expert),
        "single-expert": nfe * mean_expert,
    }
