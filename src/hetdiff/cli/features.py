"""``hetdiff features``: image features of every shard, one file set per shard (resumable).

    hetdiff features --data wds:shards/{00000..00099}.tar --encoder NAME --out FEATURES
    torchrun --standalone --nproc_per_node 2 -m hetdiff features ...   (ranks take whole shards)

``--encoder`` is a registered encoder or ``hf:PATH``, a local DINOv2 or CLIP vision folder.
The work is ``hetdiff.pipeline.shards.features_command``.
"""

from __future__ import annotations

import argparse
from typing import Any

from hetdiff.config.shards import FeatureSettings
from hetdiff.data.features import available_encoders


def register(subparsers: Any) -> None:
    """Add the ``features`` subcommand."""
    parser = subparsers.add_parser(
        "features",
        help="encode every shard's images (per-shard files; torchrun-parallel; resumable)",
        description="Per-shard image features for clustering at scale.",
    )
    d = FeatureSettings()
    parser.add_argument("--data", required=True, help="shard spec: wds:, parquet: or hf:")
    parser.add_argument(
        "--encoder",  # not choices=: hf:PATH names a folder
        default=d.encoder,
        help=f"{', '.join(available_encoders())} or hf:PATH (default {d.encoder})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="images per encoder call"
    )
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=d.decode_workers,
        help="threads decoding images ahead of the encoder; 0 decodes inline; the features "
        "are the same either way (default: %(default)s)",
    )
    parser.add_argument("--out", required=True, help="features folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.shards import features_command

    settings = FeatureSettings(
        encoder=args.encoder, batch_size=args.batch_size, decode_workers=args.decode_workers
    )
    features_command(args.data, args.out, settings, progress=not args.quiet)
    return 0
