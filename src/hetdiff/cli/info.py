"""hetdiff info: print the spec stored in an expert or router checkpoint (no weights loaded)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="print a checkpoint's spec")
    p.add_argument("checkpoint", help="an expert .safetensors (or a router folder/file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.errors import HetdiffError
    from hetdiff.experts.store import read_spec

    try:
        spec = read_spec(args.checkpoint)
        payload = json.loads(spec.to_json())
    except HetdiffError as expert_error:
        try:
            from hetdiff.models.router import read_router_spec

            payload = json.loads(read_router_spec(args.checkpoint).to_json())
        except (HetdiffError, ImportError):
            raise expert_error from None
    if isinstance(payload.get("schedule"), dict) and "alphas_cumprod" in payload["schedule"]:
        payload["schedule"]["alphas_cumprod"] = (
            f"<{len(payload['schedule']['alphas_cumprod'])} values>"
        )
    print(json.dumps(payload, indent=2, sort_keys=True))
    return 0
