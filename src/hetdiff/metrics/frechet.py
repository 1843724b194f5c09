"""Frechet distance of two feature sets, by the cheaper of two exact routes (float64).

FD(A, B) = |mu_A - mu_B|^2 + tr(S_A) + tr(S_B) - 2 tr((S_A^1/2 S_B S_A^1/2)^1/2), S the unbiased
covariances of A (n_a, D) and B (n_b, D).

- covariance route (``hetdiff.metrics.fid.frechet_distance``): two (D, D) covariances and their
  eigendecompositions, O((n_a + n_b) D^2 + D^3); cheap for small D (judge features, D = 128).
- Gram route, for few samples in many dimensions (Inception, D = 2048, n of a few hundred): with
  centred rows Ac, Bc, tr(S_A) = |Ac|_F^2 / (n_a - 1), and the nonzero eigenvalues of S_A S_B are
  the squared singular values of M = Ac Bc^T / sqrt((n_a - 1)(n_b - 1)), so
  tr((S_A^1/2 S_B S_A^1/2)^1/2) = sum_i sigma_i(M); O(n_a n_b D + min(n)^2 max(n)).
"""

from __future__ import annotations

import numpy as np

from hetdiff.errors import HetdiffError
from hetdiff.metrics.fid import frechet_distance, gaussian_stats


def _gram_route(a: np.ndarray, b: np.ndarray) -> float:
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    centred_a, centred_b = a - mean_a, b - mean_b
    scale_a, scale_b = len(a) - 1, len(b) - 1
    cross = centred_a @ centred_b.T / np.sqrt(scale_a * scale_b)  # (n_a, n_b)
    trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum()
    diff = mean_a - mean_b
    traces = (centred_a * centred_a).sum() / scale_a + (centred_b * centred_b).sum() / scale_b
    return float(diff @ diff + traces - 2 * trace_sqrt)


def frechet_distance_features(a: np.ndarray, b: np.ndarray) -> float:
    """FD between the Gaussians fitted to feature rows ``a`` (n_a, D) and ``b`` (n_b, D)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise HetdiffError(
            f"a Frechet distance needs two (n >= 2, D) feature sets, got {a.shape} and {b.shape}"
        )
    dim = a.shape[1]
    if len(a) * len(b) < dim * dim:
        return _gram_route(a, b)
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
