"""Training-step throughput of hetdiff's DiT against diffusers' PixArtTransformer2DModel.

One step = forward + MSE loss + backward + AdamW step, CPU float32, the same width, depth,
heads, patch size, resolution, channels and batch for both models. Prints images/s for each,
the ratio ours / theirs (target >= 1.3, issue 19), the model FLOPs utilization (MFU: the step's
FLOPs per second over a float32 matmul peak measured in the same rounds) and the peak-memory
increase of a training run.

Variants (all in the same paired rounds):
- ``ours``: hetdiff's ``DiT`` with its defaults (the code path every checkpoint is trained with).
- ``theirs``: diffusers' ``PixArtTransformer2DModel``, eager, as its users run it.
- ``ours fast`` (``--fast``): ours with its opt-in speed options: ``torch.compile`` of the whole
  network in place (``nn.Module.compile``: one graph, state-dict keys unchanged; ``--compile-scope
  blocks``: ``compile_blocks``, each block and the final layer apart), in mode
  ``max-autotune-no-cudagraphs`` by default (inductor may pick its C++ GEMM templates; about 20 s
  of compilation in the warm-up) and the fused AdamW kernel (``torch.optim.AdamW(fused=True)``),
  both through ``hetdiff.training.speed``, as ``train-expert --compile`` does. The optimizer is
  part of the step both sides time, so fusing it counts, but it is our trainer's choice, not the
  network's: the ``ours fast`` row mixes a network option (compile) and an optimizer option
  (fused AdamW). Outputs equal the defaults' to float rounding, not bitwise.
- ``ours bf16`` / ``theirs bf16`` (``--bf16``): both under ``torch.autocast("cpu", bfloat16)``
  (float32 weights and optimizer; matmuls and attention in bfloat16: AMX where the CPU has it).
  Not float32: the ratio target is for the float32 rows; these show what autocast buys.

MFU: the FLOPs of one step are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions and attention, forward and backward; elementwise work counts zero) on our model;
the peak is the best float32 rate of a 1024^3 matmul (``--peak-size``, best of 5 calls) over
all rounds, timed in every round beside the models (the best, because a busy neighbour can only
lower a rate), so MFU = (median images/s x FLOPs per image) / peak.

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

Timing: each variant runs in ``--processes`` processes of its own (``paired_workers``; default 3,
because the rate of one process differs from the next one's by up to 1.3x on this machine: two runs
of the same code gave "ours fast" 1.16x and 1.30x with one process each), interleaved in
``--rounds`` rounds of ``--steps`` timed steps after ``--warmup`` untimed ones (every process of
every variant once per round, the order alternating each round; one process computes at a time; a
variant's rate in a round counts the steps of all its processes). Our variants' processes apply
hetdiff's allocator policy (``hetdiff.allocator.retain_freed_memory``: freed activations are reused
instead of being unmapped and faulted in again each step; the hetdiff command line applies it to
itself); ``theirs`` runs with the default allocator, as diffusers' users run it, and ``theirs
retained`` with ours, so the table separates what the allocator policy buys from what the network
code buys (ours / theirs retained). Printed: the median and the best images/s of each model over the
rounds, and the ratio as the median of per-round ratios: the two halves of a round run back to back
under the same background load, so the paired ratio is robust on a shared machine where absolute
rates swing. ``ours`` and ``theirs`` use ``torch.optim.AdamW`` with its default (for-each) CPU
implementation and the same number of threads.

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
from collections.abc import Callable

import torch
from torch import nn

from hetdiff.conditioning import Conditioning
from hetdiff.models.dit import DiT, DiTConfig, compile_blocks
from hetdiff.training.speed import compile_network, make_adamw
from paired_workers import Workers

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


BUILDERS = {"ours": build_ours, "theirs": build_theirs}

# (network family, fused AdamW, bfloat16 autocast, hetdiff's allocator policy) of each variant
VARIANTS = {
    "ours": ("ours", False, False, True),
    "theirs": ("theirs", False, False, False),
    "theirs retained": ("theirs", False, False, True),
    "ours fast": ("ours", True, False, True),
    "ours bf16": ("ours", False, True, True),
    "theirs bf16": ("theirs", False, True, False),
}


def build_variant(name: str, args: argparse.Namespace) -> nn.Module:
    """The network of a variant; "ours fast" is compiled in place (``--compile-scope model``:
    ``training.speed.compile_network``, what ``train-expert --compile`` runs)."""
    family = VARIANTS[name][0]
    model = BUILDERS[family](args)
    if name == "ours fast":
        if args.compile_scope == "blocks":
            options = {"mode": args.compile_mode} if args.compile_mode != "default" else {}
            compile_blocks(model, **options)
        else:  # the whole network, in place (nn.Module.compile): state-dict keys unchanged
            compile_network(model, args.compile_mode)
    return model


def make_step(name: str, model: nn.Module, args: argparse.Namespace):
    """A closure running one training step of variant ``name`` on fixed random data."""
    family, fused, bf16, _ = VARIANTS.get(name, (name, False, False, False))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, IN_CHANNELS, args.res, args.res, generator=gen)
    target = torch.randn(x.shape, generator=gen)
    t = torch.rand(args.batch, generator=gen) * 999.0
    context = None
    if args.context:
        context = torch.randn(args.batch, args.tokens, args.context, generator=gen)
    # torch's default decay 0.01 as before; fused: the trainer's choice with --compile
    optimizer = make_adamw(model.parameters(), lr=1e-4, weight_decay=0.01, fused=fused)

    if family == "ours":
        cond = Conditioning(context=context) if context is not None else None

        def forward() -> torch.Tensor:
            return model(x, t, cond)
    else:

        def forward() -> torch.Tensor:
            return model(x, encoder_hidden_states=context, timestep=t, return_dict=False)[0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            prediction = forward()
        loss = torch.nn.functional.mse_loss(prediction.float(), target)
        loss.backward()
        optimizer.step()

    return step


def timed_steps(name: str, argv: list[str]) -> Callable[[], float]:
    """In a variant's process: build it, warm up, return a unit timing ``--steps`` steps."""
    args = parse_args(argv)
    torch.manual_seed(0)
    step = make_step(name, build_variant(name, args), args)
    for _ in range(args.warmup):  # warm-up (and, for "ours fast", compilation)
        step()

    def unit() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        return time.perf_counter() - start

    return unit


def step_flops(name: str, args: argparse.Namespace) -> int:
    """FLOPs of one training step (forward + backward) of an eager ``name`` network, counted by
    torch's FlopCounterMode (matmul, convolution, attention; elementwise work counts zero)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = make_step(name, BUILDERS[name](args), args)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_rate(size: int, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` float32 (size x size) @ (size x size) matmuls."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# ----------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name: str, args: argparse.Namespace) -> None:
    """Run in a fresh process: print the peak-RSS increase (MiB) of ``args.steps`` steps."""
    if VARIANTS[name][3]:
        from hetdiff.allocator import retain_freed_memory

        retain_freed_memory()
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
    parser.add_argument(
        "--processes",
        type=int,
        default=3,
        help="processes per variant: a process's rate varies by up to 1.3x from the next "
        "one's on this machine, so each round times every process of every variant",
    )
    parser.add_argument("--context", type=int, default=0, help="text width E; 0 = no text")
    parser.add_argument("--tokens", type=int, default=8, help="text tokens L with --context")
    parser.add_argument("--fast", action="store_true", help="add the 'ours fast' variant")
    parser.add_argument("--bf16", action="store_true", help="add bfloat16 autocast variants")
    parser.add_argument(
        "--compile-mode",
        choices=["default", "max-autotune-no-cudagraphs"],
        default="max-autotune-no-cudagraphs",
        help="torch.compile mode of 'ours fast' (max-autotune: inductor's C++ GEMM templates)",
    )
    parser.add_argument(
        "--compile-scope",
        choices=["model", "blocks"],
        default="model",
        help="'ours fast' compiles the whole network (one graph) or each block (compile_blocks)",
    )
    parser.add_argument("--peak-size", type=int, default=1024, help="side of the peak matmul")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument("--memory-child", choices=sorted(BUILDERS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.processes < 1 or args.rounds < 1:
        parser.error(f"--processes and --rounds must be >= 1, got {args.processes}, {args.rounds}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return

    names = ["ours", "theirs", "theirs retained"]
    names += ["ours fast"] if args.fast else []
    names += ["ours bf16", "theirs bf16"] if args.bf16 else []
    mode = f"text, {args.tokens} tokens of width {args.context}" if args.context else "uncond"
    print(
        f"DiT train step, CPU float32, {torch.get_num_threads()} threads: hidden={args.hidden} "
        f"depth={args.depth} heads={args.heads} patch={args.patch} res={args.res} "
        f"channels={IN_CHANNELS} batch={args.batch} ({mode})"
    )
    torch.manual_seed(0)
    flops = {family: step_flops(family, args) / args.batch for family in BUILDERS}
    for family, build in BUILDERS.items():
        params = sum(p.numel() for p in build(args).parameters())
        print(
            f"  {family:6s} parameters: {params:,}   "
            f"{flops[family] / 1e9:.3f} GFLOP per image per step (fwd + bwd)"
        )

    copies = range(args.processes)
    workers = Workers(
        {
            f"{name}#{i}": (VARIANTS[name][3], timed_steps, (name, argv))
            for i in copies
            for name in names
        }
    )
    rates: dict[str, list[float]] = {name: [] for name in names}
    peaks: list[float] = []
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]  # cancel drift
        seconds = workers.time(f"{name}#{i}" for i in copies for name in order)
        for name in names:  # a variant's rate in a round: all its processes' steps together
            total = sum(seconds[f"{name}#{i}"] for i in copies)
            rates[name].append(args.processes * args.steps * args.batch / total)
        peaks.append(matmul_rate(args.peak_size))
    workers.close()

    memory = {}
    if not args.no_memory:
        child_argv = [a for a in argv if a not in ("--no-memory", "--fast", "--bf16")]
        memory = {family: measure_memory(family, child_argv) for family in BUILDERS}
    peak = max(peaks)
    print(
        f"  float32 matmul peak ({args.peak_size}^3): {peak / 1e9:.1f} GFLOP/s best of rounds "
        f"({statistics.median(peaks) / 1e9:.1f} median)"
    )
    for name in names:
        family = VARIANTS[name][0]
        mfu = statistics.median(rates[name]) * flops[family] / peak
        paired = statistics.median(a / b for a, b in zip(rates[name], rates["theirs"], strict=True))
        mem = f"   peak RSS +{memory[name]:.0f} MiB" if name in memory else ""
        print(
            f"  {name:15s} {statistics.median(rates[name]):8.1f} images/s median, "
            f"{max(rates[name]):8.1f} best, MFU {mfu:5.1%}, "
            f"vs theirs {paired:.2f}x (paired){mem}"
        )
    print("  target: ours (or ours fast) / theirs >= 1.3x, float32, paired rounds")


if __name__ == "__main__":
    main()
