"""Classifier-free guidance as a wrapper over a velocity function.

    v_w(x, t, c) = v(x, t, null) + w (v(x, t, c) - v(x, t, null))

w = 1 is the conditional velocity, w = 0 the unconditional one, w > 1 guides. Guidance is affine
in the prediction, so applying it to the velocity equals applying it to eps- or x0-predictions
(design.md section 1). Both halves run in one batched call on ``cond.cat(cond.null())``; wrapping
an ``Ensemble`` guides the mixture: the unconditional half is weighted by the router's
unconditional weights r_k(x, t, null), the conditional half by r_k(x, t, c).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from hetdiff.conditioning import as_conditioning
from hetdiff.errors import HetdiffError
from hetdiff.sampling.solvers import VelocityFn


class GuidedVelocity:
    """``guided(velocity_fn, scale)``'s result: a velocity function; ``t_range`` is forwarded."""

    def __init__(self, velocity_fn: VelocityFn, scale: float) -> None:
        self.velocity_fn = velocity_fn
        self.scale = float(scale)

    @property
    def t_range(self) -> tuple[float, float]:
        return getattr(self.velocity_fn, "t_range", (0.0, 1.0))

    def __call__(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        cond = as_conditioning(cond)
        if self.scale == 1.0 or cond is None or cond.batch_size is None:
            return self.velocity_fn(x, t, cond)  # nothing to guide against
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        both = self.velocity_fn(torch.cat([x, x]), torch.cat([t, t]), cond.cat(cond.null()))
        v_cond, v_null = both.chunk(2)
        return torch.lerp(v_null, v_cond, self.scale)


def guided(velocity_fn: VelocityFn, scale: float) -> GuidedVelocity:
    """Classifier-free guidance of ``velocity_fn`` with scale w: v_null + w (v_cond - v_null).

    One call of ``velocity_fn`` on the batch [x; x] with conditions [cond; null]. w = 1, or a
    ``cond`` of None, calls ``velocity_fn`` unchanged (no extra pass).
    """
    if not (isinstance(scale, int | float) and math.isfinite(scale)):
        raise HetdiffError(f"guidance scale must be a finite number, got {scale!r}")
    return GuidedVelocity(velocity_fn, scale)
