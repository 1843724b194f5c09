"""Coverage of clusters and classes: does a model generate every part of the data?

- Cluster coverage: generated images are assigned to clusters the way the data was (the
  partition's encoder and centroids, ``hetdiff.data.partition.assign_images``); per cluster c,
  the fraction p_c of samples assigned to c against the data's fraction q_c = |c| / N, and the
  total variation distance TV = (1/2) sum_c |p_c - q_c| in [0, 1] (0: the samples split across
  clusters as the data does; an expert's samples should instead sit in its own cluster).
- Class accuracy: the fraction of class-conditional samples that the judge classifies as the
  class they were asked for (``hetdiff.metrics.judge``).

Every number comes with a bootstrap percentile interval over the samples (``bootstrap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.metrics.bootstrap import LEVEL, Interval, bootstrap_counts_interval, mean_interval


def cluster_fractions(clusters: np.ndarray, k: int) -> np.ndarray:
    """Fraction of rows in each of ``k`` clusters (k,) float64, from assignments (n,) in [0, k)."""
    clusters = np.asarray(clusters, dtype=np.int64).ravel()
    if len(clusters) == 0 or clusters.min() < 0 or clusters.max() >= k:
        raise HetdiffError(f"cluster assignments must be a non-empty array of 0..{k - 1}")
    return np.bincount(clusters, minlength=k) / len(clusters)


@dataclass(frozen=True)
class ClusterCoverage:
    """Per cluster: the samples' fraction (with interval) and the data's fraction; and their
    total variation distance (with interval)."""

    sample_fractions: tuple[Interval, ...]
    data_fractions: tuple[float, ...]
    total_variation: Interval

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_fractions": [iv.value for iv in self.sample_fractions],
            "sample_fractions_ci": [[iv.low, iv.high] for iv in self.sample_fractions],
            "data_fractions": list(self.data_fractions),
            "total_variation": self.total_variation.value,
            "total_variation_ci": [self.total_variation.low, self.total_variation.high],
        }


def cluster_coverage(
    sample_clusters: np.ndarray,
    data_sizes: np.ndarray | tuple[int, ...],
    draws: int = 200,
    seed: int = 0,
    level: float = LEVEL,
) -> ClusterCoverage:
    """Cluster coverage (module docstring) of samples assigned to ``sample_clusters`` (n,)
    against a data set with ``data_sizes`` (k,) samples per cluster."""
    sizes = np.asarray(data_sizes, dtype=np.float64)
    if sizes.ndim != 1 or len(sizes) < 1 or sizes.sum() <= 0:
        raise HetdiffError(f"data cluster sizes must be a non-empty count vector, got {sizes}")
    k = len(sizes)
    data = sizes / sizes.sum()
    clusters = np.asarray(sample_clusters, dtype=np.int64).ravel()
    cluster_fractions(clusters, k)  # validates the assignments
    one_hot = (clusters[:, None] == np.arange(k)[None]).astype(np.float64)  # (n, k)
    fractions = tuple(
        mean_interval(one_hot[:, c], draws=draws, seed=seed, level=level) for c in range(k)
    )

    def total_variation(counts: np.ndarray) -> np.ndarray:  # counts (R, n) -> (R,)
        p = counts @ one_hot / counts.sum(axis=1, keepdims=True)
        return 0.5 * np.abs(p - data[None]).sum(axis=1)

    tv = bootstrap_counts_interval(total_variation, len(clusters), draws=draws, seed=seed,
                                   level=level)  # fmt: skip
    return ClusterCoverage(fractions, tuple(float(q) for q in data), tv)


def assign_to_clusters(partition: Any, images: Tensor) -> np.ndarray | None:
    """Clusters (n,) of generated images by the partition's own feature assignment; None for a
    random partition (it has no centroids, so new images have no cluster)."""
    if partition.encoder == "random":
        return None
    from hetdiff.data.partition import assign_images

    return assign_images(partition, images)


def class_accuracy(
    judge: Any,
    images: Tensor,
    labels: Tensor | np.ndarray,
    draws: int = 200,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Fraction of ``images`` (n, C, H, W) that ``judge`` classifies as their ``labels`` (n,)
    (global class indices of the data set, >= 0: the null label -1 asks for no class, so it has
    no accuracy; leave those rows out), with its interval."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if len(labels) != len(images):
        raise HetdiffError(f"{len(images)} images but {len(labels)} labels for class accuracy")
    if len(labels) and labels.min() < 0:
        raise HetdiffError(
            "class accuracy needs the class each image was drawn for; got the null label -1 "
            "(unconditional samples): leave those rows out"
        )
    predicted = judge.predict(images).numpy()
    return mean_interval((predicted == labels).astype(np.float64), draws, seed, level)
