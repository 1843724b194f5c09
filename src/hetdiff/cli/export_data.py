"""``hetdiff export-data``: write a data set as webdataset tar shards or parquet files.

    hetdiff export-data --data SPEC --shards 8 [--format wds|parquet] --out FOLDER

Prints the spec that reads the shards back (``wds:FOLDER/{00000..00007}.tar``), usable as
``--data`` anywhere. The work is ``hetdiff.pipeline.shards.export_data_command``.
"""

from __future__ import annotations

import argparse
from typing import Any

from hetdiff.config.shards import ExportSettings
from hetdiff.data.export import EXPORT_FORMATS


def register(subparsers: Any) -> None:
    """Add the ``export-data`` subcommand."""
    parser = subparsers.add_parser(
        "export-data",
        help="write a data set as webdataset tar shards or parquet files",
        description="Export a data set (built-in, image folder or shards) to N shards.",
    )
    parser.add_argument("--data", default=None, help="dataset spec (default: the built-in mix)")
    d = ExportSettings()
    parser.add_argument(
        "--shards", type=int, default=d.shards, help="number of shards (default %(default)s)"
    )
    parser.add_argument("--format", choices=EXPORT_FORMATS, default=d.format, help="shard format")
    parser.add_argument("--out", required=True, help="output folder or fsspec URL")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from hetdiff.data.datasets import DEFAULT_DATA
    from hetdiff.pipeline.shards import export_data_command

    settings = ExportSettings(shards=args.shards, format=args.format)
    export_data_command(args.data or DEFAULT_DATA, args.out, settings)
    return 0
