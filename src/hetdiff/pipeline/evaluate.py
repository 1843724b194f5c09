"""The evaluate stage of ``hetdiff run`` and the ``hetdiff evaluate`` command: samples in,
``metrics.json`` out (``hetdiff.metrics.evaluate`` computes the numbers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hetdiff.config import EVALUATE_STRATEGIES, EvalSettings, SampleSettings
from hetdiff.data.datasets import load_dataset
from hetdiff.data.partition import Partition
from hetdiff.errors import HetdiffError
from hetdiff.experts.store import list_experts
from hetdiff.io import atomic_write_json
from hetdiff.metrics.evaluate import evaluate
from hetdiff.pipeline.samples import draw_samples
from hetdiff.sampling.files import load_samples


def evaluate_saved_samples(
    samples_dir: Path,
    experts_dir: Path,
    router_dir: Path,
    dataset: Any,
    partition: Partition,
    settings: EvalSettings,
    sample: SampleSettings,
    seed: int,
) -> dict[str, Any]:
    """Metrics of the sample sets a run's sample stage wrote to ``samples_dir``
    (``<strategy>.safetensors`` and ``expert-<cluster>.safetensors``)."""
    clusters = {spec.cluster_id: Path(path) for path, spec in list_experts(experts_dir)}
    strategies = {s: load_samples(samples_dir / f"{s}.safetensors") for s in sample.strategies}
    experts = {}
    if settings.per_expert:
        experts = {k: load_samples(samples_dir / f"expert-{k}.safetensors") for k in clusters}
    return evaluate(
        strategies, experts, clusters, router_dir, dataset, partition, settings, sample, seed
    )


def evaluate_command(
    experts_dir: str | Path,
    router: str | Path,
    out: str | Path,
    partition_path: str | Path | None = None,
    settings: EvalSettings | None = None,
    sample: SampleSettings | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """``hetdiff evaluate``: sample ``settings.n`` images from each strategy and each expert
    (``hetdiff.pipeline.samples.draw_samples``, as the run's sample stage does), measure them,
    write ``out`` (JSON) and return the metrics. ``sample`` defaults to the config's defaults
    with ``EVALUATE_STRATEGIES``."""
    settings = settings or EvalSettings()
    sample = sample or SampleSettings(strategies=EVALUATE_STRATEGIES)
    if settings.n < 2:
        raise HetdiffError(f"--n must be >= 2 for FID and diversity, got {settings.n}")
    spec = list_experts(experts_dir)[0][1]
    dataset = load_dataset(spec.data_spec, resolution=spec.resolution)
    partition = None
    if partition_path is not None:
        partition = Partition.load(str(partition_path))
        partition.check_dataset(dataset)
    drawn = draw_samples(experts_dir, router, dataset, sample, settings.n, seed)
    metrics = evaluate(
        drawn.strategies, drawn.experts, drawn.expert_paths, Path(router), dataset, partition,
        settings, sample, seed,
    )  # fmt: skip
    atomic_write_json(out, metrics)
    print(f"wrote {out}")
    return metrics
