"""``hetdiff run`` as one library call: load and check the config, run every stage, summarize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hetdiff.config import load_config
from hetdiff.metrics.verdict import ensemble_verdict
from hetdiff.pipeline.run import Run


def strategy_summary(metrics: dict[str, Any]) -> list[str]:
    """One line per sampling strategy with its float metrics, e.g.
    ``"    top1: fid=41.2, diversity=0.3"`` (4 significant digits)."""
    return [
        f"{name:>8}: "
        + ", ".join(
            f"{key}={value:.4g}" for key, value in entry.items() if isinstance(value, float)
        )
        for name, entry in metrics.get("strategies", {}).items()
    ]


def run_pipeline(
    config_path: str | Path | None,
    out: str | Path,
    preset: str | None = None,
    launcher: str = "local",
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline into the folder ``out`` and return its metrics.

    The config is the defaults, then the file at ``config_path`` (TOML/YAML/JSON, optional), then
    ``preset`` (``"quick"``: ``hetdiff.config.QUICK``); it is validated completely before the
    first stage starts, so a bad strategy or solver leaves ``out`` untouched. A killed run
    resumes from its finished stages. Prints one summary line per strategy, the verdict line
    (``hetdiff.metrics.verdict``: does the ensemble beat its best expert; where the judge metrics
    were computed) and the report path.
    ``launcher`` picks where the experts train (``hetdiff.launch``: local, slurm, ray);
    ``allow_missing`` goes on without experts that failed for good (``Run``).
    """
    config = load_config(config_path, preset=preset)
    metrics = Run(config, out, launcher=launcher, allow_missing=allow_missing).execute()
    for line in strategy_summary(metrics):
        print(line)
    verdict = ensemble_verdict(metrics)
    if verdict.comparisons:  # nothing to say where the judge metrics are off (--quick)
        print(verdict.line)
    print(f"report: {out}/report.html")
    return metrics
