"""hetdiff info: print the spec stored in an expert or router checkpoint (no weights loaded)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="print a checkpoint's spec")
    p.add_argument("checkpoint", help="an expert .safetensors (or a router folder/file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.info import describe_checkpoint

    print(json.dumps(describe_checkpoint(args.checkpoint), indent=2, sort_keys=True))
    return 0
