"""A tiny heterogeneous run on the command line (importable because pytest puts tests/ on
sys.path): digits at 8 px in 3 random clusters; clusters 0 and 1 get hetdiff flow experts
(`hetdiff train-expert`), cluster 2 an imported diffusers DDPM UNet2DModel (`hetdiff
import-expert`); the router is trained by `hetdiff train-router`. Seconds, not minutes."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler

from diffusers_models import save_folder, tiny_unet
from hetdiff.cli import main
from hetdiff.data.datasets import load_dataset
from hetdiff.data.partition import random_partition
from hetdiff.experts.store import load_expert_state, save_expert


def build_hub_run(root: Path, perturb: bool = False) -> Path:
    """RUN = root/run with experts/expert-{0,1,2}/expert.safetensors, router/, partition.json.
    ``perturb``: redraw the flow experts' weights N(0, 0.05) (4 training steps leave their
    zero-initialized output layers near zero), keeping their specs."""
    run = root / "run"
    partition = run / "partition.json"
    run.mkdir(parents=True)
    random_partition(load_dataset("digits"), 3, seed=0).save(str(partition))
    for k in (0, 1):
        argv = ["train-expert", "--data", "digits", "--resolution", "8", "--objective", "flow",
                "--model", "tiny", "--steps", "4", "--batch-size", "16", "--unconditional",
                "--mixed-precision", "no", "--partition", str(partition), "--cluster", str(k),
                "--seed", str(k), "--no-progress", "--out", str(run / "experts" / f"expert-{k}")]  # fmt: skip
        assert main(argv) == 0
        if perturb:
            path = run / "experts" / f"expert-{k}" / "expert.safetensors"
            state, spec = load_expert_state(path)
            gen = torch.Generator().manual_seed(k)
            save_expert(
                path,
                {
                    n: torch.randn(v.shape, generator=gen) * 0.05
                    if n != "x_embedder.pos_embed"
                    else v
                    for n, v in state.items()
                },
                spec,
            )
    folder = save_folder(tiny_unet(11), DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample"),
                         root / "hub-unet")  # fmt: skip
    argv = ["import-expert", str(folder), "--cluster", "2", "--partition", str(partition),
            "--experts", str(run / "experts"), "--out", str(run / "experts" / "expert-2")]  # fmt: skip
    assert main(argv) == 0
    argv = ["train-router", "--data", "digits", "--resolution", "8", "--partition",
            str(partition), "--steps", "10", "--batch-size", "32", "--unconditional",
            "--no-progress", "--out", str(run / "router")]  # fmt: skip
    assert main(argv) == 0
    return run


def perturb_expert(path: Path, seed: int) -> None:
    """Redraw an expert's weights N(0, 0.05) (its fixed positions kept), keeping its spec, so a
    few training steps' zero-initialized output layers do not make every output near zero."""
    state, spec = load_expert_state(path)
    gen = torch.Generator().manual_seed(seed)
    save_expert(path, {n: v if n == "x_embedder.pos_embed" else torch.randn(v.shape, generator=gen)
                       * 0.05 for n, v in state.items()}, spec)  # fmt: skip


def build_class_run(
    root: Path, router_args: tuple[str, ...] = (), expert_args: tuple[str, ...] = ()
) -> Path:
    """RUN = root/run: digits at 8 px in 2 random clusters, two class-conditional hetdiff DiT
    experts (cluster 0 flow, cluster 1 DDPM eps on the linear schedule, weights perturbed) and a
    class-conditional router (`train-router` with ``router_args``). Seconds. ``expert_args``
    and ``router_args`` ("--text-encoder", "hash" in both: a text run) go to the commands."""
    run = root / "run"
    partition = run / "partition.json"
    run.mkdir(parents=True)
    random_partition(load_dataset("digits"), 2, seed=0).save(str(partition))
    for k, objective in ((0, ["--objective", "flow"]), (1, ["--objective", "ddpm"])):
        out = run / "experts" / f"expert-{k}"
        argv = ["train-expert", "--data", "digits", "--resolution", "8", *objective,
                "--model", "tiny", "--steps", "2", "--batch-size", "16", "--mixed-precision",
                "no", "--partition", str(partition), "--cluster", str(k), "--seed", str(k),
                "--no-progress", *expert_args, "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        perturb_expert(out / "expert.safetensors", k)
    argv = ["train-router", "--data", "digits", "--resolution", "8", "--partition",
            str(partition), "--steps", "6", "--batch-size", "32", "--no-progress",
            *router_args, "--out", str(run / "router")]  # fmt: skip
    assert main(argv) == 0
    return run
