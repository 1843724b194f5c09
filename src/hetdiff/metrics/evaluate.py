"""Evaluation: FID (per strategy against the data; per expert against the data and its own
cluster), intra-class diversity, router accuracy/entropy per t bucket, forward FLOPs per sample.

``evaluate`` takes generated samples in memory; ``evaluate_run`` reads those of a pipeline run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hetdiff.io import default_cache_dir
from hetdiff.metrics.diversity import image_features, intra_class_diversity
from hetdiff.metrics.fid import (
    frechet_distance,
    gaussian_stats,
    inception_features,
    reference_features,
)
from hetdiff.metrics.flops import forward_flops, solver_nfe, strategy_flops

Samples = Mapping[str, tuple[Tensor, Tensor | None]]  # name -> (images, labels or None)


@dataclass(frozen=True)
class EvalSettings:
    n: int = 256  # samples per FID estimate
    fid: bool = True
    reference_n: int = 1000  # real images for the reference statistics
    seed: int = 0
    solver: str = "heun"  # for the FLOPs count
    steps: int = 30
    top_k: int = 2


def _reference_rows(dataset: Any, n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(len(dataset), generator=gen)[: min(n, len(dataset))]


def evaluate(
    strategies: Samples,
    experts: Samples,
    expert_paths: Sequence[Path],
    router_path: Path,
    dataset: Any,
    partition: Any | None,
    settings: EvalSettings,
) -> dict[str, Any]:
    """Metrics of ensemble samples (``strategies``) and single-expert samples (``experts``,
    named ``expert-<cluster>``) of the experts at ``expert_paths`` and the router."""
    from hetdiff.experts.build import load_velocity_model
    from hetdiff.models.router import load_router, router_accuracy_by_t

    metrics: dict[str, Any] = {"strategies": {}, "experts": {}}
    reference, cluster_refs = None, {}
    if settings.fid:
        rows = _reference_rows(dataset, settings.reference_n, settings.seed)
        key = f"{dataset.fingerprint}|{dataset.resolution}|{len(rows)}|{settings.seed}"
        feats = reference_features(dataset.images[rows], key, default_cache_dir(), progress=True)
        reference = gaussian_stats(feats)
        if partition is not None:
            # per-cluster references reuse the reference features of that cluster's rows
            ref_clusters = partition.cluster_of(dataset.ids[rows])
            cluster_refs = {
                k: gaussian_stats(feats[ref_clusters == k])
                for k in range(partition.k)
                if (ref_clusters == k).sum() >= 2
            }
    for group, samples in (("strategies", strategies), ("experts", experts)):
        for name, (images, labels) in samples.items():
            t0 = time.time()
            images = images[: settings.n].clamp(-1, 1)
            entry: dict[str, Any] = {"n": len(images)}
            if settings.fid:
                stats = gaussian_stats(inception_features(images))
                entry["fid"] = frechet_distance(*stats, *reference)
            if group == "experts":
                k = int(name.split("-")[-1])
                entry["cluster"] = k
                if partition is not None:
                    entry["cluster_size"] = int(partition.sizes[k])
                if k in cluster_refs:
                    entry["fid_own_cluster"] = frechet_distance(*stats, *cluster_refs[k])
            elif labels is not None:
                feats = image_features(images)
                div, _ = intra_class_diversity(feats, labels[: settings.n])
                entry["intra_class_diversity"] = div
            metrics[group][name] = entry
            print(f"[evaluate] {name}: {entry} ({time.time() - t0:.1f} s)", flush=True)

    router, router_spec = load_router(router_path)
    if partition is not None:
        buckets = router_accuracy_by_t(
            router, dataset, partition, 10, 1000, settings.seed,
            text_encoder=router_spec.text_encoder,
        )  # fmt: skip
        metrics["router_by_t"] = [b._asdict() for b in buckets]
        metrics["partition"] = {
            "k": partition.k,
            "sizes": list(partition.sizes),
            "encoder": partition.encoder,
        }
    x = torch.zeros(1, dataset.channels, dataset.resolution, dataset.resolution)
    t = torch.full((1,), 0.5)
    expert_flops = []
    for path in expert_paths:
        velocity, spec = load_velocity_model(path)
        cond = _one_condition(spec.num_classes, spec.text_encoder)
        expert_flops.append(forward_flops(lambda v=velocity, c=cond: v(x, t, c)))
    router_cond = _one_condition(router_spec.num_classes, router_spec.text_encoder)
    router_flops = forward_flops(lambda: router(x, t, router_cond))
    nfe = solver_nfe(settings.solver, settings.steps)
    metrics["flops_per_sample"] = strategy_flops(expert_flops, router_flops, nfe, settings.top_k)
    metrics["flops_per_forward"] = {"experts": expert_flops, "router": router_flops}
    return metrics


def _one_condition(num_classes: int, text_encoder: str | None) -> Any:
    """One row of a real condition (class 0, or a caption of the encoder) for counting FLOPs."""
    if text_encoder is not None:
        from hetdiff.models.text import encode_prompts, load_text_encoder

        return encode_prompts(load_text_encoder(text_encoder), ["a picture of a zero"])
    return torch.zeros(1, dtype=torch.long) if num_classes else None


def evaluate_run(run: Any) -> dict[str, Any]:
    """Metrics of a pipeline run (a :class:`hetdiff.pipeline.Run`) whose samples are on disk."""
    from hetdiff.data.partition import Partition
    from hetdiff.pipeline import load_samples

    cfg = run.config
    k_experts = len(cfg.experts)
    strategies = {
        s: load_samples(run.samples_dir / f"{s}.safetensors") for s in cfg.sample.strategies
    }
    experts = {
        f"expert-{k}": load_samples(run.samples_dir / f"expert-{k}.safetensors")
        for k in range(k_experts)
        if cfg.evaluate.per_expert
    }
    settings = EvalSettings(
        n=cfg.evaluate.n,
        fid=cfg.evaluate.fid,
        reference_n=cfg.evaluate.reference_n,
        seed=cfg.seed,
        solver=cfg.sample.solver,
        steps=cfg.sample.steps,
        top_k=cfg.sample.top_k,
    )
    metrics = evaluate(
        strategies,
        experts,
        [run.expert_dir(k) / "expert.safetensors" for k in range(k_experts)],
        run.router_dir,
        run.dataset,
        Partition.load(str(run.partition_path)),
        settings,
    )
    return {**metrics, "config": cfg.to_dict()}
