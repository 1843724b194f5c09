"""``hetdiff cluster`` as one library call: load a data set, split it into K expert shards, write
the partition manifest and a PNG montage beside it, and print the cluster sizes."""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import torch

from hetdiff.data.partition import Partition

MONTAGE_PER_ROW = 12  # training images shown per cluster


def montage_path(out: str) -> str:
    """``dir/partition.json`` -> ``dir/partition.montage.png``."""
    head, name = posixpath.split(str(out))
    stem = name[: -len(".json")] if name.endswith(".json") else name
    return posixpath.join(head, f"{stem}.montage.png") if head else f"{stem}.montage.png"


def cluster_montage_rows(
    partition: Partition, dataset: Any, per_row: int, seed: int
) -> list[torch.Tensor]:
    """Up to ``per_row`` images of each cluster, drawn at random (numpy generator ``seed``) and
    kept in id order: one tensor ``(n_k, C, H, W)`` per cluster, ``n_k = min(per_row, size_k)``."""
    rng = np.random.default_rng(seed)
    row_of_id = {int(i): r for r, i in enumerate(dataset.ids.tolist())}
    rows = []
    for cluster in range(partition.k):
        members = partition.ids[partition.clusters == cluster]
        picked = rng.choice(members, size=min(per_row, len(members)), replace=False)
        rows.append(dataset.images[[row_of_id[int(i)] for i in np.sort(picked)]])
    return rows


def size_table(partition: Partition, dataset: Any) -> str:
    """One line per cluster: size, share of the data, and counts per data source."""
    sources = dataset.sources.numpy()
    row_of_id = {int(i): r for r, i in enumerate(dataset.ids.tolist())}
    source_rows = sources[[row_of_id[int(i)] for i in partition.ids]]
    total = len(partition.ids)
    names = list(dataset.source_names)
    lines = [f"{'cluster':>7} {'size':>7} {'share':>6}  " + "  ".join(names)]
    for cluster, size in enumerate(partition.sizes):
        counts = np.bincount(source_rows[partition.clusters == cluster], minlength=len(names))
        per_source = "  ".join(f"{int(c):>{len(n)}}" for c, n in zip(counts, names, strict=True))
        lines.append(f"{cluster:>7} {size:>7} {size / total:>6.1%}  {per_source}")
    return "\n".join(lines)


def cluster_command(
    out: str,
    k: int,
    data: str | None = None,
    fine: int | None = None,
    features: str | None = None,
    seed: int = 0,
    balanced: bool = False,
    cache_dir: str | None = None,
    resolution: int | None = None,
    pca_dim: int | None = None,
    per_row: int = MONTAGE_PER_ROW,
    progress: bool = True,
) -> Partition:
    """Cluster the data set ``data`` (default: the built-in mix) into ``k`` shards by two-stage
    k-means of ``features`` (default ``DEFAULT_ENCODER``), save the manifest at ``out`` (a path
    or fsspec URL), a montage of up to ``per_row`` images per cluster at ``montage_path(out)``,
    and print a summary and the size table. Returns the partition."""
    from hetdiff.data.datasets import DEFAULT_DATA, load_dataset
    from hetdiff.data.features import DEFAULT_ENCODER
    from hetdiff.data.montage import montage_rows
    from hetdiff.data.partition import cluster_dataset

    dataset = load_dataset(data or DEFAULT_DATA)
    partition = cluster_dataset(
        dataset,
        k=k,
        fine=fine,
        features=features or DEFAULT_ENCODER,
        seed=seed,
        balanced=balanced,
        cache_dir=cache_dir,
        progress=progress,
        resolution=resolution,
        pca_dim=pca_dim,
    )
    partition.save(out)
    montage = montage_path(out)
    montage_rows(cluster_montage_rows(partition, dataset, max(1, per_row), seed), montage)
    print(
        f"partition of {partition.data_spec} ({len(partition.ids)} images) into K={partition.k} "
        f"clusters via {partition.fine} fine clusters, features {partition.encoder}, "
        f"seed {partition.seed}{', balanced' if partition.balanced else ''}"
    )
    print(size_table(partition, dataset))
    print(f"wrote {out} (fingerprint {partition.fingerprint}) and {montage}")
    return partition
