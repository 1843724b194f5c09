"""The GPU path, measured: DiT training steps and ensemble sampling on one CUDA device.

Parts (``--parts``, comma-separated; all by default), each printed as it finishes and collected
in one JSON (``--json``):

- ``peak``: a bf16 matrix product (``--matmul`` cubed) timed on the card: the measured ceiling,
  printed beside the datasheet's dense bf16 peak for the card's name.
- ``train``: one training step (forward, MSE, backward, AdamW) of a DiT-XL/2 (latent 32x32x4,
  class-conditional over 1000 classes, batch 32 by default) under bf16 autocast with float32
  weights, as ``hetdiff train-expert --mixed-precision bf16`` runs it; eager and
  ``hetdiff.models.dit.compile_blocks`` (per block, in place) and the whole model compiled with
  the fused AdamW (``hetdiff.training.speed``, what ``train-expert --compile`` runs); diffusers' ``PixArtTransformer2DModel`` at the same width, depth, heads and
  patch (no class path: the label embedding is a table lookup, about nothing) eager beside it.
  Each reports images/s, peak allocated memory (``torch.cuda.max_memory_allocated``) and model
  FLOPs utilization (MFU): the FLOPs of one forward + backward counted by torch's FlopCounterMode,
  per second, over the datasheet peak (and over the measured matmul).
- ``memory``: the same step with and without activation checkpointing
  (``hetdiff.models.checkpointing.enable_gradient_checkpointing``): peak memory and images/s;
  the check is peak < 24 GiB with checkpointing.
- ``sample``: images/s of sampling with classifier-free guidance (cond and uncond rows in one
  batched pass), ``--sample-steps`` Euler steps, batch ``--sample-batch``, bf16 autocast:
  our top-1 ensemble of ``--experts`` DiT-XL/2 experts with the conv router, one of our experts
  alone through the same solver, and a diffusers loop (``PixArtTransformer2DModel`` +
  ``FlowMatchEulerDiscreteScheduler``, guidance combined as diffusers pipelines do) over the
  same network shape. Ratios ours / diffusers. Unless ``--no-compile``, also both of ours as
  ``hetdiff sample --compile`` runs them (``hetdiff.sampling.compiled.compile_for_sampling``:
  each expert's network and the router compiled in place, torch's default mode on CUDA; the
  warm-up, which compiles, is timed apart).

Timing: CUDA events after warm-up steps; each variant is timed ``--rounds`` times and the median
is printed. Everything runs in this one process on one card.

``--device cpu`` with ``--small`` runs every part at toy size on the CPU (the code path check
the test suite uses); without a CUDA device and without ``--device cpu`` it prints that the GPU
parts are skipped and exits 0.

Usage:
    python benchmarks/gpu_check.py --json gpu_check.json          # on a GPU machine
    python benchmarks/gpu_check.py --device cpu --small            # code path check on CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from hetdiff.conditioning import Conditioning
from hetdiff.models.checkpointing import enable_gradient_checkpointing
from hetdiff.models.dit import DiT, compile_blocks, dit_config
from hetdiff.models.router import Router, RouterConfig
from hetdiff.objectives.velocity import FlowVelocity
from hetdiff.sampling.compiled import compile_for_sampling
from hetdiff.sampling.ensemble import Ensemble
from hetdiff.sampling.guidance import guided
from hetdiff.sampling.solvers import solve
from hetdiff.training.speed import compile_network, make_adamw

GIB = 2**30
# Dense (no sparsity) bf16 tensor-core peak by the vendors' datasheets, FLOP/s.
DATASHEET_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}
PARTS = ("peak", "train", "memory", "sample")


def datasheet_peak(name: str) -> float | None:
    for key, value in DATASHEET_BF16.items():
        if key in name:
            return value
    return None


class Timer:
    """Wall time of ``fn`` on ``device``: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn: Callable[[], Any], repeats: int) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0 / repeats
        begin = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - begin) / repeats


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None


def autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------- models
def shape(args: argparse.Namespace) -> dict[str, int]:
    cfg = dit_config(args.model)
    return dict(hidden=cfg.hidden_size, depth=cfg.depth, heads=cfg.num_heads, patch=cfg.patch_size)


def build_ours(args: argparse.Namespace, device: torch.device, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    net = DiT(dit_config(args.model, input_size=args.res, in_channels=4, num_classes=args.classes))
    for p in net.parameters():  # nonzero outputs (zero-initialized heads would output 0)
        p.data.normal_(0, 0.02)
    return net.to(device)


def build_pixart(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from diffusers import PixArtTransformer2DModel

    s = shape(args)
    torch.manual_seed(0)
    net = PixArtTransformer2DModel(
        num_attention_heads=s["heads"],
        attention_head_dim=s["hidden"] // s["heads"],
        in_channels=4,
        out_channels=4,
        num_layers=s["depth"],
        cross_attention_dim=None,
        caption_channels=None,
        sample_size=args.res,
        patch_size=s["patch"],
        use_additional_conditions=False,
    )
    for p in net.parameters():
        p.data.normal_(0, 0.02)
    return net.to(device)


# -------------------------------------------------------------------------------------- parts
def part_peak(args: argparse.Namespace, device: torch.device, timer: Timer) -> dict[str, Any]:
    n = args.matmul
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    timer(lambda: a @ b, 3)
    seconds = timer(lambda: a @ b, 10)
    measured = 2 * n**3 / seconds
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": name,
        "matmul_n": n,
        "measured_bf16_flops": measured,
        "datasheet_bf16_flops": datasheet_peak(name),
    }


def train_step(
    net: torch.nn.Module,
    args: argparse.Namespace,
    device: torch.device,
    pixart: bool = False,
    fused: bool = False,
) -> Callable[[], None]:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.batch, 4, args.res, args.res, device=device, generator=gen)
    target = torch.randn(x.shape, device=device, generator=gen)
    t = torch.rand(args.batch, device=device, generator=gen) * 999.0
    labels = torch.randint(0, args.classes, (args.batch,), device=device, generator=gen)
    optimizer = make_adamw(net.parameters(), lr=1e-4, fused=fused, device=device)

    def forward() -> torch.Tensor:
        if pixart:
            return net(x, encoder_hidden_states=None, timestep=t, return_dict=False)[0]
        return net(x, t, labels)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = torch.nn.functional.mse_loss(forward().float(), target)
        loss.backward()
        optimizer.step()

    step.forward = forward  # type: ignore[attr-defined]
    return step


def step_flops(step: Callable[[], None], device: torch.device) -> int:
    """FLOPs of one forward + backward (the optimizer's elementwise work is not counted)."""
    forward = step.forward  # type: ignore[attr-defined]
    with FlopCounterMode(display=False) as counter, autocast(device):
        forward().float().square().mean().backward()
    return int(counter.get_total_flops())


def measure_train(step: Callable[[], None], args, device, timer, flops, peak) -> dict[str, Any]:
    reset_peak(device)
    for _ in range(args.warmup):
        step()
    rates = [args.batch / timer(step, args.steps) for _ in range(args.rounds)]
    rate = statistics.median(rates)
    seconds = args.batch / rate
    row = {
        "images_per_s": rate,
        "rounds": rates,
        "peak_gib": peak_gib(device),
        "tflops": flops / seconds / 1e12,
    }
    if peak.get("datasheet_bf16_flops"):
        row["mfu_datasheet"] = flops / seconds / peak["datasheet_bf16_flops"]
    if peak.get("measured_bf16_flops"):
        row["mfu_measured_matmul"] = flops / seconds / peak["measured_bf16_flops"]
    return row


def part_train(args, device, timer, peak) -> dict[str, Any]:
    out: dict[str, Any] = {"model": args.model, "batch": args.batch, "latent": [4, args.res]}
    net = build_ours(args, device)
    step = train_step(net, args, device)
    flops = step_flops(step, device)
    out["flops_per_step"] = flops
    out["ours_eager"] = measure_train(step, args, device, timer, flops, peak)
    report("train ours eager", out["ours_eager"])
    compiled = {  # the library's way (per block, in place, checkpoint keys kept), then whole
        "ours_compiled_blocks": lambda: compile_blocks(build_ours(args, device)),
        "ours_compiled": lambda: compile_network(build_ours(args, device)),
    }
    for key, make in compiled.items() if args.compile else ():
        del net, step
        begin = time.perf_counter()
        net = make()
        # "ours_compiled" is `train-expert --compile`: the whole network and the fused AdamW
        step = train_step(net, args, device, fused=key == "ours_compiled")
        step()
        out[f"{key}_compile_seconds"] = time.perf_counter() - begin
        out[key] = measure_train(step, args, device, timer, flops, peak)
        report(f"train {key}", out[key])
    del net, step
    pixart = build_pixart(args, device)
    step = train_step(pixart, args, device, pixart=True)
    out["pixart_eager"] = measure_train(step, args, device, timer, step_flops(step, device), peak)
    report("train diffusers PixArt eager", out["pixart_eager"])
    out["ratio_ours_eager_over_pixart"] = (
        out["ours_eager"]["images_per_s"] / out["pixart_eager"]["images_per_s"]
    )
    for key in compiled:
        if key in out:
            out[f"ratio_{key}_over_pixart"] = (
                out[key]["images_per_s"] / out["pixart_eager"]["images_per_s"]
            )
    return out


def part_memory(args, device, timer, peak) -> dict[str, Any]:
    out: dict[str, Any] = {"model": args.model, "batch": args.batch, "limit_gib": 24.0}
    for checkpointing in (False, True):
        net = build_ours(args, device)
        if checkpointing:
            enable_gradient_checkpointing(net)
        step = train_step(net, args, device)
        key = "checkpointed" if checkpointing else "plain"
        out[key] = measure_train(step, args, device, timer, 0, {})
        out[key].pop("tflops")
        report(f"memory {key}", out[key])
        del net, step
    if out["checkpointed"]["peak_gib"] is not None:
        out["checkpointed_under_limit"] = out["checkpointed"]["peak_gib"] < out["limit_gib"]
    return out


def part_sample(args, device, timer) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    batch, steps, scale = args.sample_batch, args.sample_steps, args.cfg
    gen = torch.Generator(device=device).manual_seed(1)
    noise = torch.randn(batch, 4, args.res, args.res, device=device, generator=gen)
    labels = torch.randint(0, args.classes, (batch,), device=device, generator=gen)
    experts = [FlowVelocity(build_ours(args, device, seed=k).eval()) for k in range(args.experts)]
    torch.manual_seed(0)
    router = (
        Router(
            RouterConfig(
                num_clusters=args.experts, resolution=args.res, channels=4, num_classes=args.classes
            )
        )
        .to(device)
        .eval()
    )
    ensemble = Ensemble(experts, list(range(args.experts)), router, args.experts, "top1")
    out_seconds: dict[str, float] = {}
    cond = Conditioning(class_labels=labels)

    def ours(velocity) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), autocast(device):
                solve(guided(velocity, scale), noise, steps, (0.0, 1.0), "euler", cond=cond)

        return run

    pixart = build_pixart(args, device).eval()
    scheduler = FlowMatchEulerDiscreteScheduler()

    def diffusers_loop() -> None:
        scheduler.set_timesteps(steps, device=device)
        latents = noise.clone()
        with torch.no_grad(), autocast(device):
            for t in scheduler.timesteps:
                both = torch.cat([latents, latents])
                out = pixart(
                    both,
                    encoder_hidden_states=None,
                    timestep=t.expand(2 * batch),
                    return_dict=False,
                )[0]
                uncond, cond_out = out.float().chunk(2)
                velocity = uncond + scale * (cond_out - uncond)
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]

    runs = {
        "ours_top1_ensemble": ours(ensemble),
        "ours_single_expert": ours(experts[0]),
        "diffusers_pixart_loop": diffusers_loop,
    }
    if args.compile:  # `sample --compile`: the same weights, networks and router compiled
        fast = [FlowVelocity(build_ours(args, device, seed=k).eval()) for k in range(args.experts)]
        fast_router = copy.deepcopy(router)
        fast_ensemble = Ensemble(fast, list(range(args.experts)), fast_router, args.experts, "top1")
        compile_for_sampling(fast_ensemble)
        runs["ours_top1_ensemble_compiled"] = ours(fast_ensemble)
        runs["ours_single_expert_compiled"] = ours(fast[0])
    for name, run in runs.items():
        begin = time.perf_counter()
        run()  # warm-up (and compilation: top-1's varying rows per expert recompile once)
        if name.endswith("_compiled"):
            run()
            out_seconds[f"{name}_warmup_seconds"] = time.perf_counter() - begin
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(batch / timer(run, 1))
    out: dict[str, Any] = {
        "batch": batch,
        "steps": steps,
        "cfg": scale,
        "experts": args.experts,
        "model": args.model,
        **out_seconds,
    }
    for name, values in rates.items():
        out[name] = {"images_per_s": statistics.median(values), "rounds": values}
    base = out["diffusers_pixart_loop"]["images_per_s"]
    for name in runs:
        if name.startswith("ours_"):
            short = name.removeprefix("ours_").replace("_ensemble", "").replace("_expert", "")
            out[f"ratio_{short}_over_diffusers"] = out[name]["images_per_s"] / base
    report("sample", {k: v for k, v in out.items() if k.startswith("ratio")})
    return out


# ---------------------------------------------------------------------------------------- main
def report(name: str, row: dict[str, Any]) -> None:
    shown = {
        k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "rounds"
    }
    print(f"{name}: {shown}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="toy sizes (code path check)")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--model", default="DiT-XL/2")
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--matmul", type=int, default=8192)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--sample-batch", type=int, default=32)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--json", default=None, help="write all results to this file")
    args = p.parse_args(argv)
    if args.small:
        args.model, args.res, args.classes, args.batch = "tiny", 8, 10, 4
        args.steps, args.warmup, args.rounds, args.matmul = 1, 1, 1, 64
        args.sample_batch, args.sample_steps, args.compile = 4, 2, False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here; GPU parts skipped (use --device cpu --small to "
            "check the code path)"
        )
        return 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what users train with
        torch.backends.cudnn.allow_tf32 = True
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"gpu_check: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
        return 2
    timer = Timer(device)
    results: dict[str, Any] = {"torch": torch.__version__, "args": vars(args)}
    peak: dict[str, Any] = {}
    begin = time.perf_counter()
    runners = {
        "peak": lambda: part_peak(args, device, timer),
        "train": lambda: part_train(args, device, timer, peak),
        "memory": lambda: part_memory(args, device, timer, peak),
        "sample": lambda: part_sample(args, device, timer),
    }
    failed = []
    for name in PARTS:
        if name not in parts:
            continue
        try:  # one part failing (a compile error, out of memory) keeps the others' numbers
            results[name] = runners[name]()
        except Exception as error:  # noqa: BLE001 - reported and counted, never swallowed
            traceback.print_exc()
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            failed.append(name)
        if name == "peak" and "error" not in results[name]:
            peak = results[name]
            report("peak", peak)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["wall_seconds"] = time.perf_counter() - begin
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    print(
        f"gpu_check: done in {results['wall_seconds']:.1f} s"
        + (f"; FAILED parts: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
