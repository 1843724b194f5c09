"""The papers' tables at small scale, under equal total training FLOPs, on the default data.

Rows (every model is the same tiny DiT; an ensemble of K experts trains K x S steps in all, the
monolith trains one model for K x S steps, so training FLOPs are equal):

  monolith flow | K flow experts (feature clusters) | K mixed experts, 1 DDPM : 3 flow |
  K mixed experts, 2 DDPM : 2 flow | K flow experts on a random partition |
  and, for the 2 : 2 ensemble, the four router strategies (full, top-k, top1, sample).

Each row reports FID (in-wheel InceptionV3, same n and seeds everywhere; small-sample FID is
biased upward, so read differences, not absolute values), intra-class diversity (efficientnet
features) and forward GFLOPs per sample. The papers claim the ensemble beats the monolith
FLOP-for-FLOP and that mixed objectives do at least as well as all-flow; the table says what it
says. Writes ``OUT/paper_tables.md``, ``OUT/paper_tables.json`` and bar charts of FID and
diversity (``OUT/paper_tables_fid.svg``, ``OUT/paper_tables_diversity.svg``) and prints the table.

    python benchmarks/paper_tables.py [--steps 300] [--n 200] [--out runs/paper_tables]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from hetdiff.config import ExpertSettings, load_config
from hetdiff.experts.build import load_velocity_model
from hetdiff.io import default_cache_dir
from hetdiff.metrics.diversity import image_features, intra_class_diversity
from hetdiff.metrics.fid import (
    frechet_distance,
    gaussian_stats,
    inception_features,
    reference_features,
)
from hetdiff.metrics.flops import forward_flops, solver_nfe
from hetdiff.pipeline import Run
from hetdiff.report.svg import bar_chart
from hetdiff.sampling.generate import draw_conditions, generate
from hetdiff.training.expert import train_expert

FLOW = {"objective": "flow"}
DDPM_LINEAR = {"objective": "ddpm", "prediction": "eps", "schedule": "linear"}
DDPM_COSINE = {"objective": "ddpm", "prediction": "v", "schedule": "cosine"}

ENSEMBLES = {
    "4 flow experts (feature clusters)": ([FLOW] * 4, False, ["full"]),
    "4 mixed experts, 1 DDPM : 3 flow": ([DDPM_LINEAR, FLOW, FLOW, FLOW], False, ["full"]),
    "4 mixed experts, 2 DDPM : 2 flow": (
        [DDPM_LINEAR, FLOW, DDPM_COSINE, FLOW],
        False,
        ["full", "top-k", "top1", "sample"],
    ),
    "4 flow experts (random partition)": ([FLOW] * 4, True, ["full"]),
}


def run_config(args: argparse.Namespace, experts: list[dict], random: bool, strategies: list[str]):
    return load_config(
        overrides={
            "resolution": args.resolution,
            "workers": 2,
            "cluster": {"k": len(experts), "features": args.features, "random": random},
            "experts": [{**e, "steps": args.steps, "batch_size": args.batch} for e in experts],
            "router": {"steps": args.router_steps},
            "sample": {"n": args.n, "steps": args.sample_steps, "strategies": strategies},
            "evaluate": {"n": args.n, "reference_n": args.reference_n, "per_expert": False},
        }
    )


def monolith(args: argparse.Namespace, out: Path, dataset: Any, labels: torch.Tensor) -> dict:
    """One flow model trained K x S steps on all data, sampled with the same seeds and labels."""
    folder = out / "monolith"
    ckpt = folder / "expert.safetensors"
    settings = ExpertSettings(
        objective="flow", steps=4 * args.steps, batch_size=args.batch, progress=False,
        checkpoint_every=max(1, args.steps),
    )  # fmt: skip
    if not ckpt.is_file():
        train_expert(dataset, settings, folder, resume=(folder / "train_state").is_dir())
    velocity, _ = load_velocity_model(ckpt)
    shape = (dataset.channels, dataset.resolution, dataset.resolution)
    images = generate(velocity, shape, seeds(args), args.sample_steps, "heun", labels)
    x, t = torch.zeros(1, *shape), torch.full((1,), 0.5)
    flops = forward_flops(lambda: velocity(x, t, labels[:1]))
    return {"images": images, "gflops": solver_nfe("heun", args.sample_steps) * flops / 1e9}


def seeds(args: argparse.Namespace) -> list[int]:
    return list(range(10_000, 10_000 + args.n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per expert (S)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--router-steps", type=int, default=300)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--features", default="efficientnet-lite0@64")
    parser.add_argument("--n", type=int, default=200, help="samples per row for FID")
    parser.add_argument("--reference-n", type=int, default=1000)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--out", default="runs/paper_tables")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.time()

    for name, (experts, random, strategies) in ENSEMBLES.items():
        folder = out / name.split(" (")[0].replace(" ", "_").replace(",", "").replace(":", "")
        folder = folder.with_name(folder.name + ("_random" if random else ""))
        print(f"== {name} -> {folder}", flush=True)
        metrics = Run(run_config(args, experts, random, strategies), folder).execute()
        for strategy, entry in metrics["strategies"].items():
            label = name if strategy == "full" else f"{name}, strategy {strategy}"
            rows.append({
                "model": label,
                "fid": entry.get("fid"),
                "diversity": entry.get("intra_class_diversity"),
                "gflops": metrics["flops_per_sample"][strategy] / 1e9,
            })  # fmt: skip

    # the monolith uses the same reference, seeds and labels as the pipeline runs
    reference_run = Run(run_config(args, [FLOW] * 4, False, ["full"]), out / "4_flow_experts")
    dataset = reference_run.dataset
    labels, _ = draw_conditions(dataset, args.n, reference_run.config.seed)
    mono = monolith(args, out, dataset, labels)
    rows_perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    rows_perm = rows_perm[: args.reference_n]
    key = f"{dataset.fingerprint}|{dataset.resolution}|{len(rows_perm)}|0"
    reference = gaussian_stats(
        reference_features(dataset.images[rows_perm], key, default_cache_dir())
    )
    images = mono["images"][: args.n].clamp(-1, 1)
    fid = frechet_distance(*gaussian_stats(inception_features(images)), *reference)
    diversity, _ = intra_class_diversity(image_features(images), labels[: args.n])
    rows.insert(0, {"model": "monolith flow (1 model, K x S steps)", "fid": fid,
                    "diversity": diversity, "gflops": mono["gflops"]})  # fmt: skip

    header = (
        f"Equal training FLOPs: each expert {args.steps} steps x batch {args.batch}, monolith "
        f"{4 * args.steps} steps; {args.resolution} px; FID and diversity on n = {args.n} samples "
        f"({args.sample_steps} Heun steps) against {args.reference_n} real images."
    )
    table = ["| model | FID | intra-class diversity | GFLOPs / sample |", "|---|---|---|---|"]
    for row in rows:
        table.append(
            f"| {row['model']} | {row['fid']:.2f} | {row['diversity']:.3f} | {row['gflops']:.3f} |"
        )
    text = header + "\n\n" + "\n".join(table) + "\n"
    print("\n" + text)
    print(f"total time {time.time() - started:.0f} s")
    (out / "paper_tables.md").write_text(text)
    (out / "paper_tables.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    for key, label in (("fid", "FID (lower is better)"), ("diversity", "intra-class diversity")):
        chart = bar_chart([(row["model"], row[key]) for row in rows], header.split(";")[0], label)
        (out / f"paper_tables_{key}.svg").write_text(chart)
    print(f"wrote {out / 'paper_tables.md'} and its plots paper_tables_{{fid,diversity}}.svg")


if __name__ == "__main__":
    main()
