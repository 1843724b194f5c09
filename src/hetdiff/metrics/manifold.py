"""Precision, recall, density and coverage of generated samples against real ones, with k-NN
manifolds in a feature space (float64).

Real features X = {x_i} (N, D), generated (fake) features Y = {y_j} (M, D). NND_k(x_i) is the
distance from x_i to its k-th nearest neighbour in its own set, itself excluded; the manifold of
a set is the union of the closed balls B(x_i, NND_k(x_i)).

- precision (Kynkaanniemi et al. 2019) = (1/M) sum_j 1[exists i: |y_j - x_i| <= NND_k(x_i)]:
  the fraction of fakes inside the real manifold (quality).
- recall (Kynkaanniemi et al. 2019) = (1/N) sum_i 1[exists j: |x_i - y_j| <= NND_k(y_j)]:
  the fraction of reals inside the fake manifold (diversity).
- density (Naeem et al. 2020) = (1/(k M)) sum_j sum_i 1[|y_j - x_i| <= NND_k(x_i)]: how many
  real balls hold each fake, divided by k (about 1 when the two distributions are equal, robust to
  real outliers; it can exceed 1).
- coverage (Naeem et al. 2020) = (1/N) sum_i 1[min_j |x_i - y_j| <= NND_k(x_i)]: the fraction of
  real balls that hold at least one fake (diversity, robust to fake outliers).

The same definitions as clovaai/generative-evaluation-prdc (which uses a strict ``<``; we use the
papers' closed balls, which differ only on exact ties). Distances are computed in chunks of fake
rows, so memory stays O(chunk x N). Each metric is a mean over one set of a per-sample quantity
given the other set: precision and density average over fakes (given the real manifold), recall
and coverage over reals (given the fakes). :func:`prdc_intervals` bootstraps that mean over the
averaged set with the other set held fixed, a conditional interval: resampling the other set as
well would drop about 37% of its points from every resample and so bias "is there a ball / a
fake near me" downward (measured: precision 0.64 on two 5000 x 128 Gaussian samples, every
two-set resample between 0.54 and 0.57).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hetdiff.errors import HetdiffError
from hetdiff.metrics.bootstrap import LEVEL, Interval, mean_interval

CHUNK = 1024  # rows of the distance matrix held at once
# Balls are closed; a point at exactly the radius (the k-th neighbour itself) must count even
# when |a - b| and |b - a| round differently (they come from different rows of a product).
RADIUS_SLACK = 1e-9  # relative
PRDC_NAMES = ("precision", "recall", "density", "coverage")


def _as_features(name: str, x: np.ndarray, k: int) -> torch.Tensor:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise HetdiffError(f"{name} features must be a finite (n, D) array, got {array.shape}")
    if len(array) <= k:
        raise HetdiffError(f"{name} features need more than k={k} rows, got {len(array)}")
    return torch.from_numpy(array)


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) float64: sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0))."""
    squared = torch.addmm((b * b).sum(1)[None], a, b.T, alpha=-2).add_((a * a).sum(1)[:, None])
    return squared.clamp_min_(0).sqrt_()


def knn_radii(features: np.ndarray | torch.Tensor, k: int) -> torch.Tensor:
    """NND_k of every row (n,) float64: the (k+1)-th smallest distance in its row of the
    self-distance matrix (the smallest, 0, is the row itself)."""
    x = features if isinstance(features, torch.Tensor) else _as_features("real", features, k)
    radii = []
    for start in range(0, len(x), CHUNK):
        block = _distances(x[start : start + CHUNK], x)
        rows = torch.arange(len(block))
        block[rows, rows + start] = 0.0  # exact zero on the diagonal despite rounding
        radii.append(block.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


@dataclass(frozen=True)
class Manifolds:
    """Per-sample k-NN manifold memberships of N reals and M fakes (neighbourhood size k).

    fake_in_real (M,) bool: y_j lies in some real ball; fake_real_balls (M,) int64: how many
    real balls hold y_j; real_covered (N,) bool: x_i's ball holds some fake; real_in_fake (N,)
    bool: x_i lies in some fake ball."""

    k: int
    fake_in_real: np.ndarray
    fake_real_balls: np.ndarray
    real_covered: np.ndarray
    real_in_fake: np.ndarray

    def per_sample(self, name: str) -> np.ndarray:
        """The per-sample quantity whose mean is metric ``name`` (one of PRDC_NAMES)."""
        return {
            "precision": self.fake_in_real,
            "recall": self.real_in_fake,
            "density": self.fake_real_balls / self.k,
            "coverage": self.real_covered,
        }[name].astype(np.float64)


def build_manifolds(real: np.ndarray, fake: np.ndarray, k: int) -> Manifolds:
    """k-NN balls of ``real`` (N, D) and ``fake`` (M, D) and the memberships between them."""
    if k < 1:
        raise HetdiffError(f"k for the k-NN manifolds must be >= 1, got {k}")
    x, y = _as_features("real", real, k), _as_features("generated", fake, k)
    if x.shape[1] != y.shape[1]:
        raise HetdiffError(f"real and generated features differ in width: {x.shape} vs {y.shape}")
    real_radii = knn_radii(x, k) * (1 + RADIUS_SLACK)
    fake_radii = knn_radii(y, k) * (1 + RADIUS_SLACK)
    in_real, balls = [], []
    covered = torch.zeros(len(x), dtype=torch.bool)
    in_fake = torch.zeros(len(x), dtype=torch.bool)
    for start in range(0, len(y), CHUNK):
        dist = _distances(y[start : start + CHUNK], x)  # (chunk, N)
        inside_real = dist <= real_radii[None]
        in_real.append(inside_real.any(1))
        balls.append(inside_real.sum(1))
        covered |= inside_real.any(0)
        in_fake |= (dist <= fake_radii[start : start + CHUNK, None]).any(0)
    return Manifolds(
        k, torch.cat(in_real).numpy(), torch.cat(balls).numpy(), covered.numpy(), in_fake.numpy()
    )


def prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """precision, recall, density and coverage (module docstring) of ``fake`` against ``real``."""
    manifolds = build_manifolds(real, fake, k)
    return {name: float(manifolds.per_sample(name).mean()) for name in PRDC_NAMES}


def prdc_intervals(
    real: np.ndarray,
    fake: np.ndarray,
    k: int,
    draws: int = 200,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Interval]:
    """Each of precision, recall, density, coverage with its bootstrap percentile interval
    (over the set the metric averages, the other held fixed; module docstring)."""
    manifolds = build_manifolds(real, fake, k)
    return {
        name: mean_interval(manifolds.per_sample(name), draws=draws, seed=seed, level=level)
        for name in PRDC_NAMES
    }
