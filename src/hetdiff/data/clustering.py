"""Two-stage k-means on feature vectors (faiss), optionally with balanced coarse clusters.

Stage 1 (fine): k-means of the features ``x`` ``(N, D)`` into ``fine`` centroids, trained on at
most ``max_points_per_centroid * fine`` rows drawn at random (seeded); then every row is
assigned to its nearest fine centroid in chunks.
Stage 2 (coarse): k-means (k-means++ init, best of 10 runs) of the fine centroids into ``k``
clusters, each fine centroid weighted by its row count. A row's cluster is the coarse cluster
of its fine centroid, ``cluster(x) = fine_to_coarse[argmin_j |x - c_j|^2]``; the same rule
assigns new data.
Coarse centroids are the count-weighted means of their fine centroids.

Balanced coarse clusters (``balanced=True``): a capacity-constrained k-means on the weighted
fine centroids, started from the unbalanced solution. Each round sorts all (fine, coarse)
pairs by squared distance and walks them greedily, giving a fine centroid to the nearest coarse
cluster whose load plus the fine count stays within ``ceil(N / k)``; a fine centroid that fits
nowhere goes to the least-loaded cluster. Centroids are then re-estimated as weighted means;
rounds stop when the assignment no longer changes (at most ``balance_rounds``).

Everything is deterministic for a seed (faiss seeds its initialization; ties are broken by
index). Memory-mapped inputs are read one chunk at a time through a fresh map, so resident
memory stays flat whatever ``N`` is (peak: the training sample, ``max_points_per_centroid *
fine * D * 4`` bytes, 1.3 GB for 1024 x 1280-d). faiss's GPU build is used when it sees a GPU.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import faiss
import numpy as np

from hetdiff.errors import HetdiffError

CHUNK_ROWS = 65536


@dataclass(frozen=True, eq=False)
class TwoStageResult:
    """Output of :func:`two_stage_kmeans`.

    fine_centroids ``(fine, D)`` float32, coarse_centroids ``(k, D)`` float32,
    fine_to_coarse ``(fine,)`` int64, fine_labels ``(N,)`` int64, clusters ``(N,)`` int64.
    """

    fine_centroids: np.ndarray
    coarse_centroids: np.ndarray
    fine_to_coarse: np.ndarray
    fine_labels: np.ndarray
    clusters: np.ndarray


def default_fine_count(n: int, k: int) -> int:
    """``min(1024, max(k, n // 20))``: about 20 rows per fine centroid, capped at 1024."""
    return min(1024, max(k, n // 20))


def check_cluster_counts(n: int, k: int, fine: int) -> None:
    """One-line :class:`HetdiffError` unless ``1 <= k <= fine <= n``."""
    if k < 1:
        raise HetdiffError(f"K={k} clusters is invalid; use --k >= 1")
    if k > n:
        raise HetdiffError(f"K={k} is larger than the number of images ({n}); use --k <= {n}")
    if fine < k:
        raise HetdiffError(f"fine count {fine} is smaller than K={k}; use --fine >= {k}")
    if fine > n:
        raise HetdiffError(
            f"data set has {n} images, fewer than the {fine} fine clusters; use --fine <= {n}"
        )


# ---------------------------------------------------------------------------------------------
# Chunked reading of (possibly memory-mapped) features
# ---------------------------------------------------------------------------------------------


def iter_chunks(x: np.ndarray, rows: int = CHUNK_ROWS):
    """Yield ``(start, chunk)`` with ``chunk`` a float32 in-memory copy of ``x[start:start+rows]``.

    For an ``np.memmap`` each chunk is read through its own short-lived map, so pages touched
    by earlier chunks are unmapped and do not accumulate in resident memory.
    """
    filename = getattr(x, "filename", None)
    # Only a whole map (base is the mmap itself) has a trustworthy .offset; slices do not.
    if isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap) and x.flags.c_contiguous:
        base_offset = x.offset
        row_bytes = x.shape[1] * x.dtype.itemsize
        for start in range(0, len(x), rows):
            count = min(rows, len(x) - start)
            part = np.memmap(
                filename,
                dtype=x.dtype,
                mode="r",
                offset=base_offset + start * row_bytes,
                shape=(count, x.shape[1]),
            )
            chunk = np.array(part, dtype=np.float32)
            del part
            yield start, chunk
    else:
        for start in range(0, len(x), rows):
            yield start, np.ascontiguousarray(x[start : start + rows], dtype=np.float32)


def sample_rows(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` distinct rows of ``x`` chosen uniformly (seeded), in index order, float32."""
    n = len(x)
    if count >= n:
        return np.concatenate([chunk for _, chunk in iter_chunks(x)], axis=0)
    picked = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
    out = np.empty((count, x.shape[1]), dtype=np.float32)
    filled = 0
    for start, chunk in iter_chunks(x):
        lo, hi = np.searchsorted(picked, [start, start + len(chunk)])
        out[filled : filled + hi - lo] = chunk[picked[lo:hi] - start]
        filled += hi - lo
    return out


# ---------------------------------------------------------------------------------------------
# faiss k-means and nearest-centroid assignment
# ---------------------------------------------------------------------------------------------


def _use_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    seed: int,
    niter: int = 20,
    weights: np.ndarray | None = None,
    plus_plus: bool = False,
    nredo: int = 1,
    verbose: bool = False,
) -> np.ndarray:
    """Lloyd k-means (faiss) of ``x`` ``(n, D)`` -> centroids ``(k, D)`` float32.

    Initialized with ``k`` seeded random rows, or by k-means++ with ``plus_plus`` (where the
    faiss build has it); ``nredo`` runs keep the lowest objective. ``x`` is used whole (no
    subsampling); ``weights`` ``(n,)`` weigh the rows.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    params = faiss.ClusteringParameters()
    params.niter = niter
    params.seed = seed
    params.nredo = nredo
    if plus_plus and hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
        params.init_method = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    params.verbose = verbose
    params.min_points_per_centroid = 1
    params.max_points_per_centroid = max(1, -(-len(x) // k))  # never subsample again
    clustering = faiss.Clustering(x.shape[1], k, params)
    index = faiss.IndexFlatL2(x.shape[1])
    if _use_gpu():  # pragma: no cover - no GPU build in CI
        index = faiss.index_cpu_to_all_gpus(index)
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    clustering.train(x, index, w)
    return faiss.vector_float_to_array(clustering.centroids).reshape(k, x.shape[1]).copy()


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, rows: int = CHUNK_ROWS) -> np.ndarray:
    """``argmin_j |x_i - c_j|^2`` for every row of ``x`` ``(N, D)`` -> ``(N,)`` int64.

    Exact (flat L2 index); ``x`` is read in chunks of ``rows`` (memmap-friendly).
    """
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise HetdiffError(
            f"features of shape {tuple(x.shape)} do not match centroids of dimension "
            f"{centroids.shape[1]}; use the encoder the partition was built with"
        )
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    labels = np.empty(len(x), dtype=np.int64)
    for start, chunk in iter_chunks(x, rows):
        _, nearest = index.search(chunk, 1)
        labels[start : start + len(chunk)] = nearest[:, 0]
    return labels


# ---------------------------------------------------------------------------------------------
# Coarse stage
# ---------------------------------------------------------------------------------------------


def _weighted_means(
    points: np.ndarray, weights: np.ndarray, labels: np.ndarray, k: int, fallback: np.ndarray
) -> np.ndarray:
    """Per-label weighted mean of ``points``; a label with zero weight keeps ``fallback``."""
    sums = np.zeros((k, points.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, points.astype(np.float64) * weights[:, None])
    totals = np.bincount(labels, weights=weights, minlength=k)
    means = fallback.astype(np.float64).copy()
    filled = totals > 0
    means[filled] = sums[filled] / totals[filled, None]
    return means.astype(np.float32)


def _fill_empty(labels: np.ndarray, points: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Give every empty cluster one positive-weight point: the farthest point of the heaviest
    cluster that still has two or more such points (deterministic)."""
    labels = labels.copy()
    while True:
        loads = np.bincount(labels, weights=weights, minlength=k)
        empty = np.flatnonzero(loads == 0)
        if len(empty) == 0:
            return labels
        counts = np.bincount(labels[weights > 0], minlength=k)
        donors = np.flatnonzero(counts >= 2)
        if len(donors) == 0:
            raise HetdiffError(
                f"only {int((weights > 0).sum())} distinct non-empty fine clusters for K={k}; "
                "use a smaller --k or more (distinct) images"
            )
        donor = donors[np.argmax(loads[donors])]
        members = np.flatnonzero((labels == donor) & (weights > 0))
        centre = np.average(points[members], axis=0, weights=weights[members])
        farthest = members[np.argmax(((points[members] - centre) ** 2).sum(axis=1))]
        labels[farthest] = empty[0]


def balanced_assignment(
    points: np.ndarray, weights: np.ndarray, centroids: np.ndarray, capacity: float
) -> np.ndarray:
    """Greedy capacity-constrained assignment of weighted points to centroids.

    Walks all (point, centroid) pairs by increasing squared distance (ties by index) and gives
    a point to the centroid if its load plus the point's weight stays ``<= capacity``; points
    left over go, heaviest first, to the least-loaded centroid. Returns labels ``(n,)`` int64.
    """
    k = len(centroids)
    p64, c64 = points.astype(np.float64), centroids.astype(np.float64)
    d2 = (p64**2).sum(1)[:, None] - 2.0 * p64 @ c64.T + (c64**2).sum(1)[None, :]  # (n, k)
    order = np.lexsort((np.arange(d2.size), d2.ravel()))
    labels = np.full(len(points), -1, dtype=np.int64)
    loads = np.zeros(k, dtype=np.float64)
    for flat in order:
        point, centroid = divmod(int(flat), k)
        if labels[point] >= 0 or loads[centroid] + weights[point] > capacity:
            continue
        labels[point] = centroid
        loads[centroid] += weights[point]
    for point in sorted(np.flatnonzero(labels < 0), key=lambda i: (-weights[i], i)):
        target = int(np.argmin(loads))
        labels[point] = target
        loads[target] += weights[point]
    return labels


def coarse_stage(
    fine_centroids: np.ndarray,
    fine_counts: np.ndarray,
    k: int,
    *,
    seed: int,
    balanced: bool = False,
    niter: int = 20,
    balance_rounds: int = 20,
    coarse_redo: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``fine_centroids`` ``(fine, D)`` weighted by ``fine_counts`` into ``k`` groups.

    The k-means is initialized by k-means++ and run ``coarse_redo`` times, keeping the best
    (cheap: it sees at most ``fine`` points).
    Returns ``(coarse_centroids (k, D) float32, fine_to_coarse (fine,) int64)``; every coarse
    cluster holds at least one fine centroid with a positive count.
    """
    weights = fine_counts.astype(np.float64)
    active = np.flatnonzero(weights > 0)
    if len(active) < k:
        raise HetdiffError(
            f"only {len(active)} distinct non-empty fine clusters for K={k}; "
            "use a smaller --k or more (distinct) images"
        )
    if len(active) == k:
        centroids = fine_centroids[active].astype(np.float32)
    else:
        centroids = kmeans(
            fine_centroids[active],
            k,
            seed=seed,
            niter=niter,
            weights=weights[active],
            plus_plus=True,
            nredo=coarse_redo,
        )
    labels = _fill_empty(nearest_centroid(fine_centroids, centroids), fine_centroids, weights, k)
    centroids = _weighted_means(fine_centroids, weights, labels, k, centroids)
    if balanced:
        capacity = float(np.ceil(weights.sum() / k))
        for _ in range(balance_rounds):
            new = balanced_assignment(fine_centroids, weights, centroids, capacity)
            new = _fill_empty(new, fine_centroids, weights, k)
            centroids = _weighted_means(fine_centroids, weights, new, k, centroids)
            if np.array_equal(new, labels):
                break
            labels = new
    return centroids, labels


# ---------------------------------------------------------------------------------------------
# Both stages
# ---------------------------------------------------------------------------------------------


def two_stage_kmeans(
    x: np.ndarray,
    k: int,
    fine: int | None = None,
    *,
    seed: int = 0,
    balanced: bool = False,
    niter: int = 20,
    max_points_per_centroid: int = 256,
    verbose: bool = False,
) -> TwoStageResult:
    """Two-stage k-means of ``x`` ``(N, D)`` (array or memmap) into ``fine`` then ``k`` clusters.

    ``fine`` defaults to :func:`default_fine_count`. The fine stage trains on
    ``min(N, max_points_per_centroid * fine)`` seeded random rows, then labels all rows.
    """
    if x.ndim != 2:
        raise HetdiffError(f"features must be a 2-d array (N, D), got shape {tuple(x.shape)}")
    n = len(x)
    fine = default_fine_count(n, k) if fine is None else fine
    check_cluster_counts(n, k, fine)
    train = sample_rows(x, min(n, max_points_per_centroid * fine), seed)
    fine_centroids = kmeans(train, fine, seed=seed, niter=niter, verbose=verbose)
    del train
    fine_labels = nearest_centroid(x, fine_centroids)
    counts = np.bincount(fine_labels, minlength=fine)
    coarse_centroids, fine_to_coarse = coarse_stage(
        fine_centroids, counts, k, seed=seed, balanced=balanced, niter=niter
    )
    return TwoStageResult(
        fine_centroids=fine_centroids,
        coarse_centroids=coarse_centroids,
        fine_to_coarse=fine_to_coarse,
        fine_labels=fine_labels,
        clusters=fine_to_coarse[fine_labels],
    )


def assign(x: np.ndarray, fine_centroids: np.ndarray, fine_to_coarse: np.ndarray) -> np.ndarray:
    """Coarse cluster of each row of ``x``: ``fine_to_coarse[nearest fine centroid]`` ``(N,)``."""
    return fine_to_coarse[nearest_centroid(x, fine_centroids)]


# ---------------------------------------------------------------------------------------------
# Quality scores against reference labels
# ---------------------------------------------------------------------------------------------


def contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Counts ``table[i, j]`` of rows with the i-th distinct label and j-th distinct cluster."""
    _, a = np.unique(np.asarray(labels), return_inverse=True)
    _, b = np.unique(np.asarray(clusters), return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.float64)
    np.add.at(table, (a.ravel(), b.ravel()), 1.0)
    return table


def normalized_mutual_info(labels: np.ndarray, clusters: np.ndarray) -> float:
    """NMI = I(L; C) / ((H(L) + H(C)) / 2) (natural logs; 1.0 when both are constant)."""
    p = contingency(labels, clusters)
    p /= p.sum()
    pl, pc = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mutual = float((p[nz] * np.log(p[nz] / np.outer(pl, pc)[nz])).sum())
    entropy_l = float(-(pl * np.log(pl)).sum())
    entropy_c = float(-(pc * np.log(pc)).sum())
    if entropy_l + entropy_c == 0:
        return 1.0
    return max(0.0, mutual / ((entropy_l + entropy_c) / 2))


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of rows whose label is their cluster's majority label: sum_j max_i n_ij / N."""
    table = contingency(labels, clusters)
    return float(table.max(axis=0).sum() / table.sum())
