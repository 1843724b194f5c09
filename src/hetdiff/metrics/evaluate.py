"""Evaluation: FID (per strategy against the data; per expert against the data and its own
cluster), intra-class diversity, router accuracy/entropy per t bucket, forward FLOPs per sample.

``evaluate`` takes generated samples in memory (``hetdiff.pipeline.evaluate`` reads a run's).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hetdiff.config import EvalSettings, SampleSettings
from hetdiff.io import default_cache_dir
from hetdiff.metrics.diversity import image_features, intra_class_diversity
from hetdiff.metrics.fid import (
    frechet_distance,
    gaussian_stats,
    inception_features,
    reference_features,
)
from hetdiff.metrics.flops import forward_flops, solver_nfe, strategy_flops
from hetdiff.metrics.judged import fd_interval, judge_summary, judged_metrics, judged_reference
from hetdiff.sampling.files import SampleSet


def _reference_rows(dataset: Any, n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(len(dataset), generator=gen)[: min(n, len(dataset))]


def evaluate(
    strategies: Mapping[str, SampleSet],
    experts: Mapping[int, SampleSet],
    expert_paths: Mapping[int, Path],
    router_path: Path,
    dataset: Any,
    partition: Any | None,
    settings: EvalSettings,
    sample: SampleSettings,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of ensemble samples (``strategies``, by strategy name) and single-expert samples
    (``experts``, by the cluster the expert serves) of the experts at ``expert_paths`` (by
    cluster) and the router. The first ``settings.n`` images of each set are measured; FLOPs
    count ``sample.solver`` over ``sample.steps`` steps and ``sample.top_k`` experts for top-k;
    a sample set that carries its ``expert_usage`` (nucleus) is costed by what it ran.
    """
    from hetdiff.experts.build import load_velocity_model
    from hetdiff.experts.router_store import load_router
    from hetdiff.metrics.routing import router_accuracy_by_t

    metrics: dict[str, Any] = {"strategies": {}, "experts": {}}
    reference, cluster_refs = None, {}
    if settings.fid:
        rows = _reference_rows(dataset, settings.reference_n, seed)
        key = f"{dataset.fingerprint}|{dataset.resolution}|{len(rows)}|{seed}"
        feats = reference_features(dataset.images[rows], key, default_cache_dir(), progress=True)
        reference = gaussian_stats(feats)
        reference_inception = feats
        if partition is not None:
            # per-cluster references reuse the reference features of that cluster's rows
            ref_clusters = partition.cluster_of(dataset.ids[rows])
            cluster_refs = {
                k: gaussian_stats(feats[ref_clusters == k])
                for k in range(partition.k)
                if (ref_clusters == k).sum() >= 2
            }
    judged = None  # judge metrics: hetdiff.metrics.judged (new keys beside the FID ones)
    if settings.judge:
        judged = judged_reference(dataset, partition, settings, seed, progress=True)
        metrics["judge"] = judge_summary(judged)
    named = [("strategies", name, name, samples) for name, samples in strategies.items()]
    named += [("experts", f"expert-{k}", k, samples) for k, samples in sorted(experts.items())]
    for group, name, key, samples in named:
        t0 = time.time()
        images = samples.images[: settings.n].clamp(-1, 1)
        entry: dict[str, Any] = {"n": len(images)}
        if settings.fid:
            inception = inception_features(images, cache_dir=default_cache_dir())
            stats = gaussian_stats(inception)
            entry["fid"] = frechet_distance(*stats, *reference)
            fid_ci = fd_interval(inception, reference_inception, settings.fid_bootstrap, seed)
            entry["fid_ci"] = [fid_ci.low, fid_ci.high]
        if group == "experts":
            entry["cluster"] = key
            if partition is not None:
                entry["cluster_size"] = int(partition.sizes[key])
            if key in cluster_refs:
                entry["fid_own_cluster"] = frechet_distance(*stats, *cluster_refs[key])
        elif samples.labels is not None:
            feats = image_features(images)
            div, _ = intra_class_diversity(feats, samples.labels[: settings.n])
            entry["intra_class_diversity"] = div
        if samples.expert_usage is not None:  # nucleus: the mean number of experts it ran
            entry["experts_per_forward"] = float(samples.expert_usage.sum())
        if judged is not None:
            labels = None if samples.labels is None else samples.labels[: settings.n]
            own = key if group == "experts" else None
            entry.update(judged_metrics(judged, images, labels, own))
        metrics[group][name] = entry
        print(f"[evaluate] {name}: {entry} ({time.time() - t0:.1f} s)", flush=True)

    router, router_spec = load_router(router_path)
    if partition is not None:
        buckets = router_accuracy_by_t(
            router, dataset, partition, 10, 1000, seed,
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
    for _, path in sorted(expert_paths.items()):
        velocity, spec = load_velocity_model(path)
        cond = _one_condition(spec.num_classes, spec.text_encoder)
        expert_flops.append(forward_flops(lambda v=velocity, c=cond: v(x, t, c)))
    router_cond = _one_condition(router_spec.num_classes, router_spec.text_encoder)
    router_flops = forward_flops(lambda: router(x, t, router_cond))
    nfe = solver_nfe(sample.solver, sample.steps)
    usage = {
        n: s.expert_usage.tolist() for n, s in strategies.items() if s.expert_usage is not None
    }
    metrics["flops_per_sample"] = strategy_flops(
        expert_flops, router_flops, nfe, sample.top_k, usage
    )
    metrics["flops_per_forward"] = {"experts": expert_flops, "router": router_flops}
    return metrics


def _one_condition(num_classes: int, text_encoder: str | None) -> Any:
    """One row of a real condition (class 0, or a caption of the encoder) for counting FLOPs."""
    if text_encoder is not None:
        from hetdiff.models.text import encode_prompts, load_text_encoder

        return encode_prompts(load_text_encoder(text_encoder), ["a picture of a zero"])
    return torch.zeros(1, dtype=torch.long) if num_classes else None
