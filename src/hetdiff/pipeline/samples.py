"""Draw the samples a run is judged on: each strategy of the ensemble, and each expert alone.

One loop for ``hetdiff run``'s sample stage and ``hetdiff evaluate``: the same seeds
(10000 + i), the same conditions (labels or captions of rows drawn from the data), the same
solver, so the two commands measure the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hetdiff.config import SampleSettings
from hetdiff.experts.build import load_velocity_model
from hetdiff.experts.store import list_experts
from hetdiff.sampling.compiled import compile_for_sampling
from hetdiff.sampling.ensemble import load_ensemble
from hetdiff.sampling.files import SampleSet
from hetdiff.sampling.generate import draw_conditions, generate

FIRST_SEED = 10_000  # image i of every model starts from seeded_noise(FIRST_SEED + i)


@dataclass(frozen=True)
class DrawnSamples:
    """What ``draw_samples`` returns: samples per strategy name, per expert (keyed by the cluster
    its spec serves), and the full strategy's recorded router weights (t list, (steps, 4, K))."""

    strategies: dict[str, SampleSet]
    experts: dict[int, SampleSet]
    expert_paths: dict[int, Path]
    router_weights: dict[str, Any] | None = None


def draw_samples(
    experts_dir: str | Path,
    router: str | Path,
    dataset: Any,
    settings: SampleSettings,
    n: int,
    seed: int,
    strategies: tuple[str, ...] | None = None,
    per_expert: bool = True,
    log: Callable[[str], None] = print,
    allow_missing: bool = False,
) -> DrawnSamples:
    """``n`` samples from every strategy in ``strategies`` (default ``settings.strategies``) and,
    with ``per_expert``, from each expert of ``experts_dir`` alone.

    The ensemble samples with labels (or captions) of ``n`` rows drawn from ``dataset`` with
    ``seed`` and guidance ``settings.cfg`` (1 for an unconditional model); an expert alone is asked for the same: the same
    labels and guidance (so the judge's class accuracy and FD compare the ensemble with each
    expert on one request), a text expert the null caption at guidance 1. Experts are named by the cluster id in
    their spec, not by their file names. ``allow_missing``: clusters without an expert are left
    out, the router renormalized over the experts present. ``settings.compile``: every network
    compiled for inference (``sampling.compiled``).
    """
    entries = list_experts(experts_dir)
    spec = entries[0][1]
    shape = (spec.channels, spec.resolution, spec.resolution)
    seeds = list(range(FIRST_SEED, FIRST_SEED + n))
    text = spec.text_encoder
    labels, captions = draw_conditions(dataset, n, seed, text, bool(spec.num_classes))
    # guidance needs a condition: an unconditional model samples at 1 whatever settings.cfg says
    guidance = settings.cfg if labels is not None or captions is not None else 1.0
    drawn_strategies: dict[str, SampleSet] = {}
    weights = None
    for strategy in strategies or settings.strategies:
        record = strategy == "full"
        ens = load_ensemble(
            experts_dir, router, strategy=strategy, top_k=settings.top_k, seed=seed,
            record=record, allow_missing=allow_missing, top_p=settings.top_p,
        )  # fmt: skip
        if settings.compile:  # speed only: the same images to float rounding
            compile_for_sampling(ens)
        t0 = time.time()
        images = generate(
            ens, shape, seeds, settings.steps, settings.solver,
            None if captions is not None else labels, guidance, cond=captions,
        )  # fmt: skip
        log(f"sampled {n} images with {strategy} in {time.time() - t0:.1f} s")
        # nucleus runs a data-dependent number of experts: keep what it ran (its FLOPs)
        usage = ens.expert_usage() if strategy == "nucleus" else None
        drawn_strategies[strategy] = SampleSet(images, labels, usage)
        if record and ens.recorded:  # router weights over t of the first 4 samples
            weights = {
                "t": [float(t[0]) for t, _ in ens.recorded],
                "weights": [w[:4].tolist() for _, w in ens.recorded],
            }
    drawn_experts: dict[int, SampleSet] = {}
    paths: dict[int, Path] = {}
    for path, expert_spec in entries:
        cluster = expert_spec.cluster_id
        paths[cluster] = Path(path)
        if not per_expert:
            continue
        velocity, _ = load_velocity_model(path)
        if settings.compile:
            compile_for_sampling(velocity)
        if text is not None or labels is None:  # text: the null caption, no guidance
            asked, cfg = None, 1.0
        else:  # the ensemble's labels and guidance
            asked, cfg = labels, guidance
        t0 = time.time()
        images = generate(velocity, shape, seeds, settings.steps, settings.solver, asked, cfg)
        log(f"sampled {n} images with expert-{cluster} in {time.time() - t0:.1f} s")
        drawn_experts[cluster] = SampleSet(images, asked)
    return DrawnSamples(drawn_strategies, drawn_experts, paths, weights)
