"""Sampling throughput: hetdiff's top-1 ensemble against a diffusers PixArt loop, same shape.

Both sides generate ``--batch`` images of 4 x res x res latents from noise in ``--steps`` Euler
steps with classifier-free guidance (scale ``--cfg``), CPU float32, in this process:

- theirs: ``PixArtTransformer2DModel`` (caption_channels = E, cross_attention_dim = D, no
  additional conditions) with ``FlowMatchEulerDiscreteScheduler(shift=1)``, the loop of
  diffusers' pipelines: per step one transformer call on ``cat([latents, latents])`` with
  ``cat([text, null text])`` and an all-ones attention mask over the L tokens, the guided
  velocity ``v_null + w (v_text - v_null)``, then ``scheduler.step``.
- ours: ``hetdiff.sampling.generate`` over an ``Ensemble`` (strategy top1) of ``--experts``
  text-conditional DiT experts of the same width, depth, heads and patch (``context_dim`` = E:
  the same caption MLP and per-block cross-attention; ours also attends to its one learned null
  key) and a text-conditioned ``Router`` (random weights) evaluated once per velocity call.
  CFG is one batched pass on [cond; null] rows (``guided``), the router included.
- ours single: the same ``generate`` over one expert without router, to show what routing costs.

Each row of a top-1 ensemble costs one expert pass, so top-1 does the work of one network plus
the router; the weights are random (the cost does not depend on training); the rows each
expert receives at t = 0.5 are printed (a batch routed whole to one expert goes through it
without index copies).

Timing: each variant runs in its own process (``paired_workers``), interleaved in ``--rounds``
rounds after one untimed warm-up run (the order alternates; one process computes at a time);
printed are median images/s and the ratio to theirs as the median of per-round ratios (each
round's runs share the machine's load). Our variants' processes apply hetdiff's allocator
policy (``hetdiff.allocator.retain_freed_memory``, which the hetdiff command line applies to
itself); ``theirs`` runs with the default allocator, as diffusers' users run it, and ``theirs
retained`` with ours, which separates what the policy buys from what our code buys.
``--compile`` adds a variant whose experts run their blocks compiled
(``hetdiff.models.dit.compile_blocks``), compiled during its warm-up run.

Usage:
    python benchmarks/sampling_speed.py                  # hidden 128, depth 4, batch 16, 10 steps
    python benchmarks/sampling_speed.py --hidden 384 --depth 12 --heads 6 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from hetdiff.conditioning import Conditioning
from hetdiff.models.dit import DiT, DiTConfig, compile_blocks
from hetdiff.models.router import Router, RouterConfig
from hetdiff.objectives.velocity import FlowVelocity
from hetdiff.sampling.ensemble import Ensemble
from hetdiff.sampling.generate import generate
from paired_workers import Workers

CHANNELS = 4


def build_expert(args: argparse.Namespace, j: int, compiled: bool = False) -> FlowVelocity:
    """Expert j: a text-conditional DiT of the shape, random weights seeded by j."""
    torch.manual_seed(j)
    net = DiT(
        DiTConfig(
            input_size=args.res,
            in_channels=CHANNELS,
            patch_size=args.patch,
            hidden_size=args.hidden,
            depth=args.depth,
            num_heads=args.heads,
            context_dim=args.context,
        )
    ).eval()
    for p in net.parameters():  # nonzero outputs (zero-initialized heads would give v = 0)
        p.data.normal_(0, 0.02)
    if compiled:
        compile_blocks(net)
    return FlowVelocity(net)


def build_ensemble(args: argparse.Namespace, compiled: bool = False) -> Ensemble:
    experts = [build_expert(args, j, compiled) for j in range(args.experts)]
    torch.manual_seed(100)
    router = Router(RouterConfig(args.experts, args.res, CHANNELS, context_dim=args.context))
    for p in router.parameters():
        p.data.normal_(0, 0.3)
    return Ensemble(experts, range(args.experts), router.eval(), args.experts, strategy="top1")


def build_theirs(args: argparse.Namespace) -> torch.nn.Module:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=args.heads,
        attention_head_dim=args.hidden // args.heads,
        in_channels=CHANNELS,
        out_channels=CHANNELS,
        num_layers=args.depth,
        cross_attention_dim=args.hidden,
        caption_channels=args.context,
        sample_size=args.res,
        patch_size=args.patch,
        use_additional_conditions=False,
    ).eval()


def diffusers_loop(
    model: torch.nn.Module, args: argparse.Namespace, text: torch.Tensor
) -> Callable[[], torch.Tensor]:
    """The sampling loop of diffusers' PixArt pipelines over a flow-matching Euler scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    both = torch.cat([text, torch.zeros_like(text)])  # (2B, L, E): text rows, then null rows
    mask = torch.ones(both.shape[:2])

    @torch.no_grad()
    def run() -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        latents = torch.randn(args.batch, CHANNELS, args.res, args.res, generator=gen)
        scheduler.set_timesteps(args.steps)
        for t in scheduler.timesteps:
            pair = torch.cat([latents, latents])
            out = model(
                pair,
                encoder_hidden_states=both,
                encoder_attention_mask=mask,
                timestep=t.expand(pair.shape[0]),
                return_dict=False,
            )[0]
            v_text, v_null = out.chunk(2)
            velocity = v_null + args.cfg * (v_text - v_null)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        return latents

    return run


def ours_loop(velocity: object, args: argparse.Namespace, text: torch.Tensor) -> Callable:
    cond = Conditioning(context=text)

    def run() -> torch.Tensor:
        return generate(
            velocity,
            (CHANNELS, args.res, args.res),
            list(range(args.batch)),
            steps=args.steps,
            solver="euler",
            cond=cond,
            cfg=args.cfg,
            shift=1.0,
            batch_size=args.batch,
        )

    return run


# name -> hetdiff's allocator policy in the variant's process (see paired_workers)
VARIANTS = {
    "theirs": False,
    "theirs retained": True,
    "ours top1": True,
    "ours single": True,
    "ours top1 compiled": True,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128, help="width D")
    parser.add_argument("--depth", type=int, default=4, help="number of blocks")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--patch", type=int, default=2, help="patch side P")
    parser.add_argument("--res", type=int, default=32, help="latent side H = W")
    parser.add_argument("--context", type=int, default=64, help="text width E")
    parser.add_argument("--tokens", type=int, default=8, help="text tokens L")
    parser.add_argument("--experts", type=int, default=4, help="K experts of the ensemble")
    parser.add_argument("--batch", type=int, default=16, help="images per run (2x rows with CFG)")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps")
    parser.add_argument("--cfg", type=float, default=4.0, help="guidance scale")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--compile", action="store_true", help="add a compiled-experts variant")
    return parser.parse_args(argv)


def text_of(args: argparse.Namespace) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(args.batch, args.tokens, args.context, generator=gen)


def timed_sampling(name: str, argv: list[str]) -> Callable[[], float]:
    """In a variant's process: build it, run it once (warm-up, compilation), return a unit
    timing one sampling run of ``--batch`` images."""
    args = parse_args(argv)
    text = text_of(args)
    if name.startswith("theirs"):
        run = diffusers_loop(build_theirs(args), args, text)
    else:
        compiled = name.endswith("compiled")
        single = name == "ours single"
        velocity = build_expert(args, 0) if single else build_ensemble(args, compiled)
        run = ours_loop(velocity, args, text)
    run()

    def unit() -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    return unit


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    names = ["theirs", "theirs retained", "ours top1", "ours single"]
    names += ["ours top1 compiled"] if args.compile else []
    print(
        f"sampling, CPU float32, {torch.get_num_threads()} threads: hidden={args.hidden} "
        f"depth={args.depth} heads={args.heads} patch={args.patch} res={args.res} "
        f"channels={CHANNELS} text={args.tokens}x{args.context} batch={args.batch} "
        f"steps={args.steps} cfg={args.cfg} experts={args.experts} (top1)"
    )
    text = text_of(args)
    with torch.no_grad():
        ensemble = build_ensemble(args)
        pair = torch.randn(2 * args.batch, CHANNELS, args.res, args.res)
        both = Conditioning(context=torch.cat([text, torch.zeros_like(text)]))
        weights = ensemble.weights(pair, torch.full((2 * args.batch,), 0.5), both)
        shares = torch.bincount(weights.argmax(1), minlength=args.experts)
    print(f"  top1 rows per expert at t = 0.5 (cond + null rows): {shares.tolist()}")
    workers = Workers({name: (VARIANTS[name], timed_sampling, (name, argv)) for name in names})
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name, seconds in workers.time(order).items():
            rates[name].append(args.batch / seconds)
    workers.close()
    for name, values in rates.items():
        paired = statistics.median(a / b for a, b in zip(values, rates["theirs"], strict=True))
        print(
            f"  {name:20s} {statistics.median(values):8.1f} images/s median   "
            f"vs theirs {paired:.2f}x (paired rounds)"
        )
    print("  target: ours top1 / theirs >= 1.2x")


if __name__ == "__main__":
    main()
