"""Shared fixtures: a float64 Gaussian mixture whose exact denoisers are known in closed form."""

from __future__ import annotations

import pytest
import torch

from hetdiff.objectives.gaussian_mixture import GaussianMixture


@pytest.fixture
def mixture() -> GaussianMixture:
    """Three isotropic components in (C, H, W) = (2, 2, 2), well enough apart to be multimodal."""
    gen = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(3, 8, generator=gen, dtype=torch.float64)
    return GaussianMixture(
        means, torch.tensor([0.3, 0.5, 0.8]), torch.tensor([0.5, 0.3, 0.2]), (2, 2, 2)
    )
