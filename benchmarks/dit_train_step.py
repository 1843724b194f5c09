"""Training-step throughput of hetdiff's DiT against diffusers' PixArtTransformer2DModel.

One step = forward + MSE loss + backward + AdamW step, CPU float32, the same width, depth,
heads, patch size, resolution, channels and batch for both models. Prints images/s for each,
the ratio ours / theirs (target >= 1.0) and the peak-memory increase of a training run.

What is compared, and why it is equal work:
- Default (unconditional): PixArtTransformer2DModel built with ``cross_attention_dim=None`` and
  ``caption_channels=None`` has no cross-attention sublayer (diffusers' BasicTransformerBlock
  creates ``attn2`` only when a cross-attention width is set) and ignores
  ``encoder_hidden_states``; with ``use_additional_conditions=False`` its AdaLN-Single timestep
  path is sinusoid(256) -> Linear-SiLU-Linear -> SiLU-Linear(D, 6D), as ours. The two networks
  then have the same layers and the same parameter count (printed), so this is the fairest
  comparison: it isolates the implementation. Class-conditional cannot be made equal (PixArt
  has no class-label path), which is why the class embedding is left out.
- ``--context E``: text-conditional on both sides, ``--tokens L`` random text tokens of width E:
  ours with ``context_dim=E`` (caption MLP + per-block cross-attention, plus our one learned
  null key), PixArt with ``caption_channels=E, cross_attention_dim=D`` (the same caption MLP and
  cross-attention). Ours attends to L + 1 keys, PixArt to L.

Timing: both models run in this process, interleaved in ``--rounds`` rounds of ``--steps``
timed steps after ``--warmup`` untimed ones (the order alternates each round). Printed: the
median and the best images/s of each model over the rounds, and the ratio as the median of
per-round ratios: the two halves of a round run back to back under the same background load,
so the paired ratio is robust on a shared machine where absolute rates swing. Both use ``torch.optim.AdamW`` with its
default (for-each) CPU implementation and the same number of threads.

Memory: tracemalloc only sees Python-heap allocations, and torch's CPU tensors are allocated by
its C++ allocator, so it reports almost nothing. torch.profiler(profile_memory=True) does see
tensor allocations but slows the step and its peak needs post-processing. We instead run each
model in a fresh child process and report the increase of the process's peak resident set size
(``VmHWM`` from /proc/self/status, the same number as ``resource.getrusage().ru_maxrss``) over
the resident set just before the first training step: activations, gradients, AdamW state and
allocator slack, everything the step really costs. A separate process per model matters because
a freed allocation stays resident in the allocator and would hide the second model's peak.

Usage:
    python benchmarks/dit_train_step.py                      # small default, < 2 minutes
    python benchmarks/dit_train_step.py --hidden 384 --depth 12 --heads 6 --res 32 --batch 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from hetdiff.conditioning import Conditioning
from hetdiff.models.dit import DiT, DiTConfig

IN_CHANNELS = 4  # latent-like input, as PixArt


# ----------------------------------------------------------------------------- models
def build_ours(args: argparse.Namespace) -> nn.Module:
    config = DiTConfig(
        input_size=args.res,
        in_channels=IN_CHANNELS,
        patch_size=args.patch,
        hidden_size=args.hidden,
        depth=args.depth,
        num_heads=args.heads,
        context_dim=args.context or None,
    )
    return DiT(config)


def build_theirs(args: argparse.Namespace) -> nn.Module:
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=args.heads,
        attention_head_dim=args.hidden // args.heads,
        in_channels=IN_CHANNELS,
        out_channels=IN_CHANNELS,
        num_layers=args.depth,
        cross_attention_dim=args.hidden if args.context else None,
        caption_channels=args.context or None,
        sample_size=args.res,
        patch_size=args.patch,
        use_additional_conditions=False,
    )


def make_step(name: str, model: nn.Module, args: argparse.Namespace):
    """A closure running one training step on fixed random data."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, IN_CHANNELS, args.res, args.res, generator=gen)
    target = torch.randn(x.shape, generator=gen)
    t = torch.rand(args.batch, generator=gen) * 999.0
    context = None
    if args.context:
        context = torch.randn(args.batch, args.tokens, args.context, generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    if name == "ours":
        cond = Conditioning(context=context) if context is not None else None

        def forward() -> torch.Tensor:
            return model(x, t, cond)
    else:

        def forward() -> torch.Tensor:
            return model(x, encoder_hidden_states=context, timestep=t, return_dict=False)[0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(forward(), target)
        loss.backward()
        optimizer.step()

    return step


BUILDERS = {"ours": build_ours, "theirs": build_theirs}


# ----------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name: str, args: argparse.Namespace) -> None:
    """Run in a fresh process: print the peak-RSS increase (MiB) of ``args.steps`` steps."""
    torch.manual_seed(0)
    step = make_step(name, BUILDERS[name](args), args)
    before = _status_kib("VmRSS")
    for _ in range(max(args.steps, 2)):
        step()
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024}))


def measure_memory(name: str, argv: list[str]) -> float:
    cmd = [sys.executable, __file__, *argv, "--memory-child", name]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=128, help="width D")
    parser.add_argument("--depth", type=int, default=4, help="number of blocks")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--patch", type=int, default=2, help="patch side P")
    parser.add_argument("--res", type=int, default=32, help="input side H = W")
    parser.add_argument("--batch", type=int, default=16, help="images per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--context", type=int, default=0, help="text width E; 0 = no text")
    parser.add_argument("--tokens", type=int, default=8, help="text tokens L with --context")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument("--memory-child", choices=sorted(BUILDERS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return

    torch.manual_seed(0)
    models = {name: build(args) for name, build in BUILDERS.items()}
    mode = f"text, {args.tokens} tokens of width {args.context}" if args.context else "uncond"
    print(
        f"DiT train step, CPU float32, {torch.get_num_threads()} threads: hidden={args.hidden} "
        f"depth={args.depth} heads={args.heads} patch={args.patch} res={args.res} "
        f"channels={IN_CHANNELS} batch={args.batch} ({mode})"
    )
    for name, model in models.items():
        print(f"  {name:6s} parameters: {sum(p.numel() for p in model.parameters()):,}")

    steps = {name: make_step(name, model, args) for name, model in models.items()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds):
        order = list(steps) if round_index % 2 == 0 else list(reversed(steps))  # cancel drift
        for name in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            rates[name].append(args.steps * args.batch / (time.perf_counter() - start))

    median = {name: statistics.median(r) for name, r in rates.items()}
    best = {name: max(r) for name, r in rates.items()}
    paired = statistics.median(a / b for a, b in zip(rates["ours"], rates["theirs"], strict=True))
    memory = {}
    if not args.no_memory:
        child_argv = [a for a in argv if a != "--no-memory"]
        memory = {name: measure_memory(name, child_argv) for name in steps}
    for name in steps:
        mem = f"   peak RSS +{memory[name]:.0f} MiB" if memory else ""
        print(f"  {name:6s} {median[name]:8.1f} images/s median, {best[name]:8.1f} best{mem}")
    print(
        f"  ratio ours/theirs: {paired:.2f}x median of paired rounds, "
        f"{best['ours'] / best['theirs']:.2f}x best vs best  (target >= 1.0x)"
    )


if __name__ == "__main__":
    main()
