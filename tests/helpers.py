"""Small assertions shared by the tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    return float((a64 - b64).abs().max() / b64.abs().max())
