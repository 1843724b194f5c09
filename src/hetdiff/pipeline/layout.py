"""Where a run folder keeps each artifact: the one place that names the run's files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """The files and folders of the run folder ``out``."""

    out: Path

    @property
    def config(self) -> Path:
        return self.out / "config.json"

    @property
    def partition(self) -> Path:
        return self.out / "partition.json"

    @property
    def clusters_montage(self) -> Path:
        return self.out / "clusters.png"

    @property
    def experts(self) -> Path:
        return self.out / "experts"

    def expert(self, k: int) -> Path:
        """The folder the pipeline trains expert ``k`` in (read back through the registry)."""
        return self.experts / f"expert-{k}"

    @property
    def router(self) -> Path:
        return self.out / "router"

    @property
    def samples(self) -> Path:
        return self.out / "samples"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.json"

    @property
    def report(self) -> Path:
        return self.out / "report.html"

    def state_key(self, folder: Path) -> str:
        """The store key of the training state of the job working in ``folder`` (an expert's
        or the router's), relative to the run's root: ``experts/expert-k/train_state``."""
        from hetdiff.training.loop import STATE_DIRNAME

        return f"{folder.relative_to(self.out).as_posix()}/{STATE_DIRNAME}"

    def marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"
