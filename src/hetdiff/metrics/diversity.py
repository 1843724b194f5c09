"""Intra-class diversity: mean pairwise distance among samples of one class (or prompt) in an
image-feature space (efficientnet-lite0 by default): the offline stand-in for the papers' LPIPS
diversity, named as such. Higher means more varied samples for the same condition."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hetdiff.errors import HetdiffError


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over all unordered pairs of rows of (N, D) features; N >= 2:
    sum_{i < j} |f_i - f_j| / (N (N - 1) / 2), in float64."""
    feats = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float64))  # any strides
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise HetdiffError(f"diversity needs at least 2 samples, got shape {tuple(feats.shape)}")
    # direct differences (not the |a|^2 + |b|^2 - 2ab shortcut): exact zeros for equal rows
    dist = torch.cdist(feats, feats, compute_mode="donot_use_mm_for_euclid_dist")
    n = feats.shape[0]
    return float(dist.sum() / (n * (n - 1)))


def intra_class_diversity(
    features: np.ndarray, labels: Tensor | np.ndarray, min_count: int = 2
) -> tuple[float, dict[int, float]]:
    """(mean over classes, per-class values) of the mean pairwise feature distance among
    samples sharing a label; classes with fewer than ``min_count`` samples are skipped."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(features):
        raise HetdiffError(
            f"diversity needs one label per feature row: {len(features)} rows, "
            f"labels of shape {labels.shape}"
        )
    per_class = {
        int(c): mean_pairwise_distance(features[labels == c])
        for c in np.unique(labels)
        if (labels == c).sum() >= max(2, min_count)
    }
    if not per_class:
        raise HetdiffError("no class has 2 or more samples; sample more images per class")
    return float(np.mean(list(per_class.values()))), per_class


def image_features(images: Tensor, encoder: str = "efficientnet-lite0") -> np.ndarray:
    """Features (N, D) of images (N, C, H, W) in [-1, 1] with a registered encoder, uncached."""
    from hetdiff.data.features import compute_features, get_encoder

    return np.asarray(compute_features(images, get_encoder(encoder), progress=False))
