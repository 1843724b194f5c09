"""Activation (gradient) checkpointing of a transformer's blocks, without changing the model.

``enable_gradient_checkpointing(model)`` makes every block of ``model.blocks`` drop its
activations in the forward pass and recompute them in the backward pass
(``torch.utils.checkpoint.checkpoint``, non-reentrant), as diffusers'
``enable_gradient_checkpointing()`` does for its transformers. Memory for activations falls from
O(depth) blocks to about one block, for about one extra forward pass of compute (a training step
costs roughly 4 forward passes instead of 3).

The wrapper is set on each block instance (its ``forward`` attribute), so the parameters, their
names and the state dict are unchanged: checkpoints saved with or without it are the same bytes.
Gradients are the same up to float rounding (the recomputation repeats the same kernels, so on
the CPU they are usually bitwise equal). With gradients disabled (sampling, evaluation) the
blocks run as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hetdiff.errors import HetdiffError

_MARK = "_hetdiff_plain_forward"


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def enable_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Checkpoint (``enabled``) or stop checkpointing every block in ``model.blocks``.

    Returns the number of blocks changed. Idempotent. Raises HetdiffError for a model without a
    ``blocks`` ModuleList (the DiT and the transformer router have one).
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise HetdiffError(
            f"{type(model).__name__} has no 'blocks' list to checkpoint; gradient checkpointing "
            "is for transformer models (DiT, the transformer router)"
        )
    changed = 0
    for block in blocks:
        plain = block.__dict__.get(_MARK)
        if enabled and plain is None:
            block.__dict__[_MARK] = block.forward
            block.forward = _checkpointed(block.forward)
            changed += 1
        elif not enabled and plain is not None:
            del block.__dict__["forward"]
            del block.__dict__[_MARK]
            changed += 1
    return changed
