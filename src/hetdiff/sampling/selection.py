"""Which experts a routing strategy runs, from the router's weights: small pure functions on a
(B, K) weight tensor (rows sum to 1), each returning ``(choice, share)``:

    choice (B, m) long   expert columns per row; -1 marks an unused slot (nucleus pads to the
                         largest kept set of the batch); a column appears at most once per row
    share  (B, m)        the weight of each chosen column, renormalized to sum to 1 per row
                         (0 in unused slots)

Strategies (``hetdiff.config.STRATEGIES``; "full" needs no selection: every column, weight r):
    top-k    the k largest weights                                          m = k
    top1     the largest weight                                             m = 1
    sample   one column drawn from Categorical(r)                           m = 1
    nucleus  the fewest largest weights whose sum reaches top_p (at least one; Holtzman et
             al.'s top-p, applied to experts)                               m = max kept

Ranking is a stable descending sort, not ``topk``: tied weights (an untrained router is uniform)
pick the lowest column on every device (CUDA's topk breaks ties in no documented order); top-k,
top1 and nucleus all keep a prefix of that one ranking, so nucleus with a tiny top_p chooses
exactly what top1 chooses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hetdiff.errors import HetdiffError


def rank_experts(weights: Tensor) -> Tensor:
    """Columns of ``weights`` (B, K) per row by descending weight, ties by lower column: (B, K)."""
    return weights.sort(dim=1, descending=True, stable=True).indices


def top_k_choice(weights: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest weights per row (1 <= k <= K), renormalized: share = r / sum of kept r."""
    if not 1 <= k <= weights.shape[1]:
        raise HetdiffError(f"top-k needs 1 <= k <= {weights.shape[1]}, got k={k!r}")
    choice = rank_experts(weights)[:, :k]
    top = weights.gather(1, choice)
    return choice, top / top.sum(dim=1, keepdim=True)


def nucleus_sizes(weights: Tensor, top_p: float) -> Tensor:
    """How many experts nucleus keeps per row, (B,) long in [1, K]: the smallest m whose m
    largest weights sum to >= ``top_p``, i.e. 1 + the number of ranks whose preceding
    cumulative weight is still below ``top_p``. top_p in (0, 1]."""
    if not 0 < top_p <= 1:
        raise HetdiffError(f"nucleus needs top_p in (0, 1], got {top_p!r}")
    ranked = weights.gather(1, rank_experts(weights))
    before = ranked.cumsum(dim=1) - ranked  # weight of the higher ranks, (B, K)
    return (before[:, 1:] < top_p).sum(dim=1) + 1


def nucleus_choice(weights: Tensor, top_p: float) -> tuple[Tensor, Tensor]:
    """Per row the fewest largest weights whose sum reaches ``top_p`` (``nucleus_sizes``),
    renormalized; rows that keep fewer than the batch's largest set are padded with column -1
    and share 0. A batch in which every row keeps one expert gives m = 1, weight 1 (top1)."""
    sizes = nucleus_sizes(weights, top_p)
    width = int(sizes.max())
    order = rank_experts(weights)[:, :width]
    kept = torch.arange(width, device=weights.device).unsqueeze(0) < sizes.unsqueeze(1)
    top = weights.gather(1, order) * kept
    choice = torch.where(kept, order, torch.full_like(order, -1))
    return choice, top / top.sum(dim=1, keepdim=True)


def sample_choice(weights: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One column per row drawn from Categorical(weights) on the CPU with ``generator`` (so the
    draws depend on the seed only, not the device); share 1."""
    draw = torch.multinomial(weights.detach().cpu().double(), 1, generator=generator)
    choice = draw.to(weights.device)
    return choice, torch.ones(choice.shape, dtype=weights.dtype, device=weights.device)
