"""``hetdiff cluster``: split a data set into K expert shards and write the partition manifest.

    hetdiff cluster --data SPEC --k K [--fine N] [--features NAME] --out partition.json

Prints the cluster sizes (with each cluster's share per data source) and writes beside the
manifest a PNG montage, one row of sample images per cluster (``partition.montage.png``).
"""

from __future__ import annotations

import argparse
import posixpath
from typing import Any

import numpy as np
import torch

from hetdiff.data.features import DEFAULT_ENCODER, available_encoders
from hetdiff.data.montage import montage_rows
from hetdiff.data.partition import Partition, cluster_dataset


def register(subparsers: Any) -> None:
    """Add the ``cluster`` subcommand."""
    parser = subparsers.add_parser(
        "cluster",
        help="cluster a data set into K expert shards (writes a partition manifest)",
        description="Two-stage k-means of image features into K expert shards.",
    )
    parser.add_argument("--data", default=None, help="dataset spec (default: the built-in mix)")
    parser.add_argument("--k", type=int, required=True, help="number of coarse clusters (experts)")
    parser.add_argument(
        "--fine", type=int, default=None, help="fine clusters (default min(1024, max(K, N // 20)))"
    )
    parser.add_argument(
        "--features",
        default=DEFAULT_ENCODER,
        help=f"feature encoder: {', '.join(available_encoders())} (default {DEFAULT_ENCODER})",
    )
    parser.add_argument(
        "--resolution", type=int, default=None, help="efficientnet input size in px (default 112)"
    )
    parser.add_argument("--pca-dim", type=int, default=None, help="PCA width for --features pixels")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed")
    parser.add_argument("--balanced", action="store_true", help="balance the coarse cluster sizes")
    parser.add_argument(
        "--cache-dir", default=None, help="feature cache (default ~/.cache/hetdiff)"
    )
    parser.add_argument("--per-row", type=int, default=12, help="sample images per montage row")
    parser.add_argument("--out", required=True, help="manifest path or fsspec URL (.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=handler)


def _load_dataset(spec: str | None) -> Any:
    from hetdiff.data.datasets import DEFAULT_DATA, load_dataset

    return load_dataset(spec or DEFAULT_DATA)


def montage_path(out: str) -> str:
    """``dir/partition.json`` -> ``dir/partition.montage.png``."""
    head, name = posixpath.split(str(out))
    stem = name[: -len(".json")] if name.endswith(".json") else name
    return posixpath.join(head, f"{stem}.montage.png") if head else f"{stem}.montage.png"


def montage_for(partition: Partition, dataset: Any, per_row: int, seed: int) -> list[torch.Tensor]:
    """Up to ``per_row`` images of each cluster, drawn at random (seeded), one tensor a row."""
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


def handler(args: argparse.Namespace) -> int:
    dataset = _load_dataset(args.data)
    partition = cluster_dataset(
        dataset,
        k=args.k,
        fine=args.fine,
        features=args.features,
        seed=args.seed,
        balanced=args.balanced,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        resolution=args.resolution,
        pca_dim=args.pca_dim,
    )
    partition.save(args.out)
    montage = montage_path(args.out)
    montage_rows(montage_for(partition, dataset, max(1, args.per_row), args.seed), montage)
    print(
        f"partition of {partition.data_spec} ({len(partition.ids)} images) into K={partition.k} "
        f"clusters via {partition.fine} fine clusters, features {partition.encoder}, "
        f"seed {partition.seed}{', balanced' if partition.balanced else ''}"
    )
    print(size_table(partition, dataset))
    print(f"wrote {args.out} (fingerprint {partition.fingerprint}) and {montage}")
    return 0
