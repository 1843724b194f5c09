"""Exponential moving average of a model's weights.

After every optimizer step, each floating-point parameter p updates its shadow copy

    shadow <- decay_n * shadow + (1 - decay_n) * p,
    decay_n = min(decay, (1 + n) / (10 + n))   with warmup (n = updates done so far),
    decay_n = decay                            without.

The warmup lets the average forget the random initialization quickly early in training
(decay_0 = 0.1, decay_90 = 0.91, ...). Buffers and non-float tensors are copied, not averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hetdiff.errors import HetdiffError


class EMA:
    """A shadow copy of ``model.state_dict()`` updated by ``update(model)`` after each step.

    The shadow lives on the model's device in the model's dtype; ``state_dict()`` returns it,
    ``num_updates`` counts the updates (both are needed to resume exactly).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise HetdiffError(f"EMA decay must be in [0, 1], got {decay}; use e.g. 0.999")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            name: tensor.detach().clone() for name, tensor in model.state_dict().items()
        }
        self._float_names = {
            name for name, param in model.named_parameters() if param.is_floating_point()
        }

    def current_decay(self) -> float:
        """The decay the next ``update`` will use (see the module docstring)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * param for parameters; buffers are copied."""
        weight = 1.0 - self.current_decay()
        for name, tensor in model.state_dict().items():
            shadow = self.shadow[name]
            if name in self._float_names:
                shadow.lerp_(tensor.detach().to(shadow.dtype), weight)
            else:
                shadow.copy_(tensor)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights, keyed like ``model.state_dict()`` (live tensors, not copies)."""
        return self.shadow

    def load_state_dict(self, state: dict[str, Tensor], num_updates: int) -> None:
        """Restore the shadow weights and the update count saved by a previous run."""
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise HetdiffError(
                f"EMA state does not match the model: missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}; resume with the same model architecture"
            )
        with torch.no_grad():
            for name, shadow in self.shadow.items():
                shadow.copy_(state[name])
        self.num_updates = int(num_updates)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights and buffers with the averaged ones."""
        model.load_state_dict(self.shadow, strict=True)
