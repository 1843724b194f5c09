"""``hetdiff cluster``: split a data set into K expert shards and write the partition manifest.

    hetdiff cluster --data SPEC --k K [--fine N] [--features NAME] --out partition.json

Prints the cluster sizes (with each cluster's share per data source) and writes beside the
manifest a PNG montage, one row of sample images per cluster (``partition.montage.png``).
The work is ``hetdiff.pipeline.cluster.cluster_command``.
"""

from __future__ import annotations

import argparse
from typing import Any

from hetdiff.data.features import DEFAULT_ENCODER, available_encoders
from hetdiff.pipeline.cluster import MONTAGE_PER_ROW


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
        "--features",  # not choices=: a key such as efficientnet-lite0@224 names a resolution
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
    parser.add_argument(
        "--per-row", type=int, default=MONTAGE_PER_ROW, help="sample images per montage row"
    )
    parser.add_argument("--out", required=True, help="manifest path or fsspec URL (.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.cluster import cluster_command

    cluster_command(
        args.out,
        args.k,
        data=args.data,
        fine=args.fine,
        features=args.features,
        seed=args.seed,
        balanced=args.balanced,
        cache_dir=args.cache_dir,
        resolution=args.resolution,
        pca_dim=args.pca_dim,
        per_row=args.per_row,
        progress=not args.quiet,
    )
    return 0
