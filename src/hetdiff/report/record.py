"""The typed record of a run's artifacts that the report is written from.

The pipeline fills it (``hetdiff.pipeline.artifacts.run_record``); the report reads nothing
else: no config objects, no folder layout, no file names of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExpertRecord:
    """One expert: the cluster it serves, a short description, its grid and training log."""

    cluster: int
    description: str  # e.g. "ddpm eps linear", "flow velocity"
    grid: Path  # PNG of its samples alone
    log: Path  # JSONL training log (lines with "step" and "loss")


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a text run and its grid."""

    prompt: str
    grid: Path


@dataclass(frozen=True)
class RunRecord:
    """Everything ``write_report`` shows."""

    data: str  # how the data was named
    resolution: int
    num_clusters: int
    text_encoder: str | None
    strategy_grids: tuple[tuple[str, Path], ...]  # (strategy, PNG) in the config's order
    experts: tuple[ExpertRecord, ...]
    router_log: Path
    clusters_montage: Path
    metrics: dict[str, Any]  # metrics.json
    config: dict[str, Any]  # the resolved config, shown verbatim
    router_weights: dict[str, Any] | None = None  # {"t": [...], "weights": [step][sample][k]}
    prompt_strategy: str | None = None
    prompts: tuple[PromptRecord, ...] = field(default_factory=tuple)
    missing_clusters: tuple[int, ...] = ()  # clusters whose expert failed (--allow-missing)
