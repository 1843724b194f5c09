"""A run folder's artifacts as the typed record the report is written from."""

from __future__ import annotations

import json
from pathlib import Path

from hetdiff.config import RunConfig
from hetdiff.experts.store import list_experts
from hetdiff.metrics.verdict import ensemble_verdict
from hetdiff.pipeline.class_rows import read_class_rows
from hetdiff.pipeline.layout import RunLayout
from hetdiff.report.record import ExpertRecord, PromptRecord, RunRecord


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_record(config: RunConfig, layout: RunLayout) -> RunRecord:
    """The record of a run folder: grids (and the class rows of ``pipeline.class_rows``), logs,
    metrics and their verdict (``metrics.verdict``); experts as the registry lists them (by the
    cluster in each spec)."""
    samples = layout.samples
    experts = []
    for path, spec in sorted(list_experts(layout.experts), key=lambda e: e[1].cluster_id):
        schedule = (spec.schedule or {}).get("name", "")
        experts.append(
            ExpertRecord(
                cluster=spec.cluster_id,
                description=f"{spec.objective} {spec.prediction} {schedule}".strip(),
                grid=samples / f"expert-{spec.cluster_id}.png",
                log=Path(path).parent / "log.jsonl",
            )
        )
    prompts_listing = _read_json(samples / "prompts.json") or {}
    metrics = _read_json(layout.metrics) or {}
    prompts = tuple(
        PromptRecord(str(entry["prompt"]), samples / entry["file"])
        for entry in prompts_listing.get("prompts", [])
    )
    return RunRecord(
        data=config.data,
        resolution=config.resolution,
        num_clusters=config.cluster.k,
        text_encoder=config.text_encoder,
        strategy_grids=tuple((s, samples / f"{s}.png") for s in config.sample.strategies),
        experts=tuple(experts),
        router_log=layout.router / "log.jsonl",
        clusters_montage=layout.clusters_montage,
        metrics=metrics,
        config=config.to_dict(),
        router_weights=_read_json(samples / "router_weights.json"),
        prompt_strategy=prompts_listing.get("strategy"),
        prompts=prompts,
        missing_clusters=tuple((_read_json(layout.marker("experts")) or {}).get("missing", ())),
        class_grids=read_class_rows(samples),
        verdict=ensemble_verdict(metrics).line if metrics else None,
    )
