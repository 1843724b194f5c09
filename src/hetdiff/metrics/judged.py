"""The judge-based metrics of one sample set, each with its 95% bootstrap interval, as
``evaluate`` reports them beside Inception FID.

Against a reference of real images the judge was not trained on (its held-out rows, at most
``EvalSettings.judge_reference_n``): ``fd_judge`` (Frechet distance of judge features, basic
bootstrap interval over both sets), ``precision``/``recall``/``density``/``coverage`` (k-NN
manifolds with ``k = EvalSettings.nearest_k``, against the first min(n, reference) reference
rows so both sets have one size), ``class_accuracy`` (class-conditional samples classified as
their class, over the rows drawn for a class: rows with the null label -1, such as an expert
sampled alone, ask for no class and are left out; a set of only those has no class_accuracy),
cluster coverage (``coverage.cluster_coverage``), and for an expert ``fd_judge_own_cluster``
(against the reference rows of its own cluster). Intervals are written ``<key>_ci = [low, high]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from hetdiff.config import EvalSettings
from hetdiff.errors import HetdiffError
from hetdiff.metrics.bootstrap import Interval, bootstrap_interval
from hetdiff.metrics.coverage import assign_to_clusters, class_accuracy, cluster_coverage
from hetdiff.metrics.frechet import frechet_distance_features
from hetdiff.metrics.judge import Judge, get_judge, reference_rows
from hetdiff.metrics.manifold import prdc_intervals


@dataclass
class JudgedReference:
    """What every sample set is compared with: the judge, the real reference features (R, F),
    the reference rows' clusters (R,) (None without a partition), and the settings."""

    judge: Judge
    features: np.ndarray
    clusters: np.ndarray | None
    partition: Any
    settings: EvalSettings
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)


def fd_interval(a: np.ndarray, b: np.ndarray, draws: int, seed: int) -> Interval:
    """Frechet distance of feature sets (n_a, D), (n_b, D) with its basic bootstrap interval."""
    return bootstrap_interval(
        frechet_distance_features, a, b, draws=draws, seed=seed, method="basic"
    )


def judged_reference(
    dataset: Any, partition: Any, settings: EvalSettings, seed: int = 0, progress: bool = False
) -> JudgedReference:
    """Load (or train and cache) the data set's judge and embed its held-out reference rows."""
    started = time.time()
    judge = get_judge(dataset, settings.judge_steps, settings.judge_holdout, progress=progress)
    rows = reference_rows(dataset, judge, settings.judge_holdout, settings.judge_reference_n)
    loaded = time.time()
    features = judge.features(dataset.images[rows])
    clusters = None
    if partition is not None:
        clusters = partition.cluster_of(dataset.ids[rows])
    seconds = {"judge": loaded - started, "reference_features": time.time() - loaded}
    return JudgedReference(judge, features, clusters, partition, settings, seed, seconds)


def _put(entry: dict[str, Any], key: str, interval: Interval) -> None:
    entry[key] = interval.value
    entry[f"{key}_ci"] = [interval.low, interval.high]


def judged_metrics(
    reference: JudgedReference,
    images: Tensor,
    labels: Tensor | None = None,
    own_cluster: int | None = None,
) -> dict[str, Any]:
    """The judge-based metrics (module docstring) of ``images`` (n, C, H, W) in [-1, 1], with
    their requested ``labels`` (n,) for class accuracy (-1: no class asked for) and, for an
    expert, its cluster."""
    settings, judge, seed = reference.settings, reference.judge, reference.seed
    draws = settings.bootstrap
    if len(images) <= settings.nearest_k:
        raise HetdiffError(
            f"the judge metrics need more than k={settings.nearest_k} samples, got {len(images)}"
        )
    started = time.time()
    features = judge.features(images)
    entry: dict[str, Any] = {"judge_features": judge.name}
    _put(entry, "fd_judge", fd_interval(features, reference.features, draws, seed))
    real = reference.features[: len(features)]
    for name, interval in prdc_intervals(real, features, settings.nearest_k, draws, seed).items():
        _put(entry, name, interval)
    asked = None if labels is None else labels >= 0  # the null label -1 asks for no class
    if asked is not None and bool(asked.any()) and judge.is_classifier:
        accuracy = class_accuracy(judge, images[asked], labels[asked], draws, seed)
        _put(entry, "class_accuracy", accuracy)
    if reference.partition is not None:
        assigned = assign_to_clusters(reference.partition, images)
        if assigned is not None:
            coverage = cluster_coverage(assigned, reference.partition.sizes, draws, seed)
            entry["clusters"] = coverage.to_dict()
    if own_cluster is not None and reference.clusters is not None:
        own = reference.features[reference.clusters == own_cluster]
        if len(own) >= 2:
            interval = fd_interval(features, own, draws, seed)
            _put(entry, "fd_judge_own_cluster", interval)
    entry["judge_seconds"] = round(time.time() - started, 3)
    return entry


def judge_summary(reference: JudgedReference) -> dict[str, Any]:
    """What the report says about the judge: which features, its held-out accuracy, the
    reference size, k and the bootstrap draws."""
    spec = reference.judge.spec
    summary: dict[str, Any] = {
        "features": reference.judge.name,
        "reference_n": int(len(reference.features)),
        "nearest_k": reference.settings.nearest_k,
        "bootstrap": reference.settings.bootstrap,
        "seconds": {k: round(v, 3) for k, v in reference.seconds.items()},
    }
    if spec is not None:
        summary.update(
            heldout_accuracy=spec.accuracy,
            n_train=spec.n_train,
            n_holdout=spec.n_holdout,
            steps=spec.steps,
            train_seconds=spec.train_seconds,
            feature_dim=spec.config.feature_dim,
        )
    return summary
