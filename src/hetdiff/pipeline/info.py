"""``hetdiff info`` as one library call: the spec a checkpoint records, read without its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hetdiff.errors import HetdiffError


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """The spec stored in an expert ``.safetensors`` or a router (its folder or file) as a JSON
    mapping; a stored DDPM ``alphas_cumprod`` table is abbreviated to ``"<N values>"``. An unreadable
    path raises the expert store's one-line ``HetdiffError``."""
    from hetdiff.experts.router_store import read_router_spec
    from hetdiff.experts.store import read_spec

    try:
        payload = json.loads(read_spec(path).to_json())
    except HetdiffError as expert_error:
        try:
            payload = json.loads(read_router_spec(path).to_json())
        except HetdiffError:
            raise expert_error from None
    schedule = payload.get("schedule")
    if isinstance(schedule, dict) and "alphas_cumprod" in schedule:
        schedule["alphas_cumprod"] = f"<{len(schedule['alphas_cumprod'])} values>"
    return payload
