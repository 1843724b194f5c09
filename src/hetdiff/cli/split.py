"""``hetdiff split``: cluster per-shard features and write one shard set per cluster.

    hetdiff split --data SHARDS --features FEATURES --k K --out OUT [--subsample M]

Writes ``OUT/cluster-k/{00000..}.tar`` with ``index.json`` per cluster and ``OUT/split.json``;
an island trains with ``hetdiff train-expert --data wds:OUT/cluster-k``. The work is
``hetdiff.pipeline.shards.split_command``.
"""

from __future__ import annotations

import argparse
from typing import Any

from hetdiff.config.shards import SplitSettings


def register(subparsers: Any) -> None:
    """Add the ``split`` subcommand."""
    parser = subparsers.add_parser(
        "split",
        help="cluster shard features and write one shard set per cluster",
        description="Subsampled two-stage k-means, streaming assignment, per-cluster shards.",
    )
    d = SplitSettings()
    parser.add_argument("--data", required=True, help="shard spec the features were made from")
    parser.add_argument("--features", required=True, help="folder written by hetdiff features")
    parser.add_argument("--k", type=int, required=True, help="number of clusters (islands)")
    parser.add_argument(
        "--fine", type=int, default=d.fine, help="fine clusters (default min(1024, subsample/20))"
    )
    parser.add_argument(
        "--subsample", type=int, default=d.subsample, help="feature rows k-means trains on "
        "(default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=d.seed, help="k-means and subsample seed")
    parser.add_argument(
        "--per-shard", type=int, default=d.per_shard, help="samples per output shard"
    )
    parser.add_argument("--out", required=True, help="output folder or fsspec URL")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.shards import split_command

    settings = SplitSettings(
        fine=args.fine, subsample=args.subsample, seed=args.seed, per_shard=args.per_shard
    )
    split_command(args.data, args.features, args.out, args.k, settings)
    return 0
