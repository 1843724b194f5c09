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
class ClassRow:
    """One class's row of a strategy's samples: the class index and name, how many of the
    strategy's samples were drawn for it, and the PNG of the first of them (None: none drawn)."""

    label: int
    name: str
    count: int
    grid: Path | None


@dataclass(frozen=True)
class ClassGrid:
    """A strategy's samples by class: one row per class shown, taken from its ``n`` samples."""

    strategy: str
    n: int
    rows: tuple[ClassRow, ...]


@dataclass(frozen=True)
class ClassGrids:
    """Every strategy's class grid; rows hold at most ``per_class`` images; the data has
    ``num_classes`` classes (a grid may show fewer rows)."""

    per_class: int
    num_classes: int
    strategies: tuple[ClassGrid, ...]


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
    class_grids: ClassGrids | None = None  # samples by class (class-labelled runs)
    verdict: str | None = None  # one line: does the ensemble beat its best expert
