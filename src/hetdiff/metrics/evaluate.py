"""Evaluation of a run: FID (overall per strategy, per expert against its own cluster),
intra-class diversity, router accuracy/entropy per t bucket, and forward FLOPs per sample."""

from __future__ import annotations

import time
from typing import Any

import torch

from hetdiff.data.features import default_cache_dir
from hetdiff.metrics.diversity import image_features, intra_class_diversity
from hetdiff.metrics.fid import (
    fid_against,
    frechet_distance,
    gaussian_stats,
    inception_features,
    reference_features,
)
from hetdiff.metrics.flops import forward_flops, solver_nfe, strategy_flops


def _reference_rows(dataset: Any, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(len(dataset), generator=gen)[: min(n, len(dataset))]


def evaluate_run(run: Any) -> dict[str, Any]:
    """Metrics of a finished sample stage of ``run`` (a :class:`hetdiff.pipeline.Run`)."""
    from hetdiff.data.partition import Partition
    from hetdiff.experts.build import load_velocity_model
    from hetdiff.models.router import load_router, router_accuracy_by_t
    from hetdiff.pipeline import load_samples

    cfg = run.config
    ev = cfg.evaluate
    dataset = run.dataset
    partition = Partition.load(str(run.partition_path))
    metrics: dict[str, Any] = {"strategies": {}, "experts": {}, "config": cfg.to_dict()}
    names = list(cfg.sample.strategies) + [f"expert-{k}" for k in range(len(cfg.experts))]
    reference = cluster_refs = None
    if ev.fid:
        rows = _reference_rows(dataset, ev.reference_n, cfg.seed)
        key = f"{dataset.fingerprint}|{dataset.resolution}|{len(rows)}|{cfg.seed}"
        feats = reference_features(dataset.images[rows], key, default_cache_dir(), progress=True)
        reference = gaussian_stats(feats)
        ref_clusters = partition.cluster_of(dataset.ids[rows])
        # per-cluster references reuse the reference features of that cluster's rows
        cluster_refs = {
            k: gaussian_stats(feats[ref_clusters == k])
            for k in range(partition.k)
            if (ref_clusters == k).sum() >= 2
        }
    for name in names:
        t0 = time.time()
        images, labels = load_samples(run.samples_dir / f"{name}.safetensors")
        images = images[: ev.n].clamp(-1, 1)
        entry: dict[str, Any] = {"n": len(images)}
        if name.startswith("expert-"):
            k = int(name.split("-")[1])
            entry["cluster"] = k
            entry["cluster_size"] = int(partition.sizes[k])
            if ev.fid:
                stats = gaussian_stats(inception_features(images))
                entry["fid"] = frechet_distance(*stats, *reference)
                if k in cluster_refs:
                    entry["fid_own_cluster"] = frechet_distance(*stats, *cluster_refs[k])
            metrics["experts"][name] = entry
        else:
            if ev.fid:
                entry["fid"] = fid_against(images, reference)
            if labels is not None:
                feats = image_features(images)
                entry["intra_class_diversity"], _ = intra_class_diversity(feats, labels[: ev.n])
            metrics["strategies"][name] = entry
        print(f"[evaluate] {name}: {entry} ({time.time() - t0:.1f} s)", flush=True)

    router, _ = load_router(run.router_dir)
    buckets = router_accuracy_by_t(router, dataset, partition, buckets=10, n=1000, seed=cfg.seed)
    metrics["router_by_t"] = [b._asdict() for b in buckets]

    shape = (1, dataset.channels, cfg.resolution, cfg.resolution)
    x = torch.zeros(shape)
    t = torch.full((1,), 0.5)
    cond = torch.zeros(1, dtype=torch.long) if cfg.class_conditional else None
    expert_flops = []
    for k in range(len(cfg.experts)):
        velocity, _ = load_velocity_model(run.expert_dir(k) / "expert.safetensors")
        expert_flops.append(forward_flops(lambda v=velocity: v(x, t, cond)))
    router_flops = forward_flops(lambda: router(x, t, cond))
    nfe = solver_nfe(cfg.sample.solver, cfg.sample.steps)
    metrics["flops_per_sample"] = strategy_flops(expert_flops, router_flops, nfe, cfg.sample.top_k)
    metrics["flops_per_forward"] = {"experts": expert_flops, "router": router_flops}
    metrics["partition"] = {
        "k": partition.k,
        "sizes": list(partition.sizes),
        "encoder": partition.encoder,
    }
    return metrics
