"""Two-stage k-means: exact recovery of separated blobs, determinism, balance, memmaps, errors."""

from __future__ import annotations

import numpy as np
import pytest

from hetdiff.data.clustering import (
    balanced_assignment,
    check_cluster_counts,
    default_fine_count,
    iter_chunks,
    nearest_centroid,
    normalized_mutual_info,
    purity,
    sample_rows,
    two_stage_kmeans,
)
from hetdiff.errors import HetdiffError


def blobs(sizes: list[int], dim: int = 16, spread: float = 0.05, seed: int = 0):
    """Gaussian blobs with centres 10 apart; returns (x (N, dim) float32, labels (N,))."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * 10
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return x.astype(np.float32), labels


def test_default_fine_count() -> None:
    assert default_fine_count(15000, 8) == 750
    assert default_fine_count(100, 8) == 8
    assert default_fine_count(10**6, 8) == 1024


def test_separated_blobs_are_recovered_exactly() -> None:
    x, labels = blobs([120, 80, 100, 60])
    result = two_stage_kmeans(x, 4, 16, seed=0)
    # Each coarse cluster is exactly one blob.
    for cluster in range(4):
        assert len(np.unique(labels[result.clusters == cluster])) == 1
    assert len(np.unique(result.clusters)) == 4
    # The cluster rule is fine_to_coarse[nearest fine centroid], nearest checked in float64.
    d2 = ((x[:, None, :].astype(np.float64) - result.fine_centroids[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(result.fine_labels, d2.argmin(axis=1))
    np.testing.assert_array_equal(result.clusters, result.fine_to_coarse[result.fine_labels])
    # Coarse centroids are the count-weighted means of their fine centroids.
    counts = np.bincount(result.fine_labels, minlength=16).astype(np.float64)
    for cluster in range(4):
        members = result.fine_to_coarse == cluster
        expected = np.average(result.fine_centroids[members], axis=0, weights=counts[members])
        np.testing.assert_allclose(result.coarse_centroids[cluster], expected, atol=1e-5)


def test_deterministic_for_a_seed_and_seed_matters() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 8)).astype(np.float32)  # no structure: init decides
    a = two_stage_kmeans(x, 5, 40, seed=3)
    b = two_stage_kmeans(x, 5, 40, seed=3)
    for name in ("fine_centroids", "coarse_centroids", "fine_to_coarse", "clusters"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = two_stage_kmeans(x, 5, 40, seed=4)
    assert not np.array_equal(a.fine_centroids, c.fine_centroids)


def test_memmap_input_gives_the_same_clusters(tmp_path) -> None:
    x, _ = blobs([300, 200, 100], dim=8, spread=1.0)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    chunks = list(iter_chunks(mapped, rows=64))
    assert [start for start, _ in chunks] == list(range(0, 600, 64))
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), x)
    np.testing.assert_array_equal(sample_rows(mapped, 50, seed=2), sample_rows(x, 50, seed=2))
    in_memory = two_stage_kmeans(x, 3, 12, seed=0, max_points_per_centroid=20)
    from_disk = two_stage_kmeans(mapped, 3, 12, seed=0, max_points_per_centroid=20)
    np.testing.assert_array_equal(in_memory.clusters, from_disk.clusters)
    np.testing.assert_array_equal(in_memory.fine_centroids, from_disk.fine_centroids)


def test_balanced_coarse_clusters_are_more_even() -> None:
    x, _ = blobs([1400, 200, 200, 200], dim=8, spread=1.0, seed=5)
    plain = two_stage_kmeans(x, 4, 64, seed=0)
    even = two_stage_kmeans(x, 4, 64, seed=0, balanced=True)
    plain_sizes = np.bincount(plain.clusters, minlength=4)
    even_sizes = np.bincount(even.clusters, minlength=4)
    assert plain_sizes.max() - plain_sizes.min() >= 400  # k-means follows the blobs
    assert even_sizes.max() - even_sizes.min() < (plain_sizes.max() - plain_sizes.min()) / 4
    # Within capacity ceil(N / K) plus at most one fine cluster of slack.
    largest_fine = np.bincount(even.fine_labels).max()
    assert even_sizes.max() <= 500 + largest_fine


def test_balanced_assignment_respects_capacity() -> None:
    points = np.array([[0.0], [0.1], [0.2], [0.3], [10.0], [10.1]], dtype=np.float32)
    weights = np.ones(6)
    centroids = np.array([[0.0], [10.0]], dtype=np.float32)
    labels = balanced_assignment(points, weights, centroids, capacity=3)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])  # the farthest-left spills over


def test_nearest_centroid_rejects_wrong_width() -> None:
    with pytest.raises(HetdiffError, match=r"shape \(3, 5\).*dimension 4"):
        nearest_centroid(np.zeros((3, 5), np.float32), np.zeros((2, 4), np.float32))


@pytest.mark.parametrize(
    ("n", "k", "fine", "message"),
    [
        (10, 0, 5, "K=0 clusters is invalid"),
        (10, -2, 5, "K=-2 clusters is invalid"),
        (10, 11, 11, r"K=11 is larger than the number of images \(10\)"),
        (10, 4, 3, "fine count 3 is smaller than K=4"),
        (10, 4, 12, "data set has 10 images, fewer than the 12 fine clusters"),
    ],
)
def test_bad_counts_are_one_line_errors(n: int, k: int, fine: int, message: str) -> None:
    with pytest.raises(HetdiffError, match=message) as err:
        check_cluster_counts(n, k, fine)
    assert "\n" not in str(err.value)
    with pytest.raises(HetdiffError, match=message):
        two_stage_kmeans(np.zeros((n, 2), np.float32), k, fine)


def test_too_few_distinct_points_is_an_error() -> None:
    x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)  # 3 distinct points, 30 rows
    with pytest.raises(HetdiffError, match="only 3 distinct non-empty fine clusters for K=4"):
        two_stage_kmeans(x, 4, 6, seed=0)


def test_scores_match_their_definitions() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    clusters = np.array([5, 5, 7, 7, 7, 9, 9, 9])
    # Purity: majorities 2 (cluster 5) + 2 (cluster 7) + 3 (cluster 9) out of 8.
    assert purity(labels, clusters) == 7 / 8
    # NMI from a float64 hand computation of mutual information and entropies.
    n = len(labels)
    mutual = 0.0
    for a in np.unique(labels):
        for b in np.unique(clusters):
            joint = np.sum((labels == a) & (clusters == b)) / n
            if joint > 0:
                pa, pb = np.mean(labels == a), np.mean(clusters == b)
                mutual += joint * np.log(joint / (pa * pb))

    def entropy(values: np.ndarray) -> float:
        p = np.unique(values, return_counts=True)[1] / n
        return float(-(p * np.log(p)).sum())

    expected = mutual / ((entropy(labels) + entropy(clusters)) / 2)
    assert abs(normalized_mutual_info(labels, clusters) - expected) < 1e-12
    assert normalized_mutual_info(labels, labels + 10) == pytest.approx(1.0)
    assert normalized_mutual_info(np.zeros(4), np.zeros(4)) == 1.0
