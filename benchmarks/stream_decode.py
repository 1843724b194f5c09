"""Streamed training with and without decode workers: batches/s of ``StreamBatches`` when each
batch's JPEGs are decoded inline (``decode_workers=0``) or by a pool of threads that decodes the
next batch ahead while the step runs (``--workers``, default 2 = ``train-expert``'s default).

Data: ``--images`` JPEGs of ``--width`` x ``--height`` px (smooth random RGB, quality 90) in
tar shards, decoded to ``--resolution`` px squares, batches of ``--batch``. Two kinds of step:

- ``gpu-like``: the step waits ``--step-ms`` without using a CPU (``time.sleep``), as a host
  waits for an accelerator. Inline decoding adds its whole time to every step; decoded ahead,
  a step costs max(step, decode / workers).
- ``cpu``: one AdamW training step of hetdiff's "small" DiT on the batch, on this machine's
  cores (2 threads): decoding ahead competes with the step for the same cores.

Each variant runs in the same process, interleaved over ``--rounds`` rounds of ``--batches``
batches (alternating order); printed: the median batches/s of each and the median of paired
per-round ratios (workers / inline). The batches are checked equal, bitwise, in every round.

    .venv/bin/python benchmarks/stream_decode.py                 # both kinds, about 2 minutes
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hetdiff.data.export import ShardSetWriter
from hetdiff.data.shard_stream import ShardStream
from hetdiff.data.shards import ShardSample
from hetdiff.models.dit import build_dit
from hetdiff.training.stream import StreamBatches


def write_jpeg_shards(root: Path, images: int, width: int, height: int) -> str:
    """``images`` smooth random RGB JPEGs with captions in tar shards of 64; the ``wds:`` spec."""
    from PIL import Image

    rng = np.random.default_rng(0)
    writer = ShardSetWriter(str(root), max(1, images // 64))
    for i in range(images):
        coarse = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        coarse.resize((width, height), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        writer.write(ShardSample(f"j/{i:05d}", buffer.getvalue(), "jpg", f"image {i}", {}))
    writer.close()
    return f"wds:{root}"


def make_step(kind: str, args: argparse.Namespace):
    """The per-batch work of a ``kind`` step: (images) -> None."""
    if kind == "gpu-like":
        return lambda images: time.sleep(args.step_ms / 1000)
    torch.manual_seed(0)
    model = build_dit("small", input_size=args.resolution, in_channels=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(images: torch.Tensor) -> None:
        t = torch.rand(images.shape[0])
        loss = (model(images, t) - images).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(batches: StreamBatches, step, count: int, size: int) -> tuple[float, list[torch.Tensor]]:
    """Seconds for ``count`` batches of ``size`` (fetch + step) and the batches' images."""
    seen = []
    start = time.perf_counter()
    for _ in range(count):
        images, _ = batches.next_batch(size)
        step(images)
        seen.append(images)
    return time.perf_counter() - start, seen


def compare(kind: str, spec: str, args: argparse.Namespace) -> None:
    step = make_step(kind, args)
    streams = {
        name: StreamBatches(ShardStream(spec, args.resolution, None, 256, 0), "none", None, w)
        for name, w in (("inline", 0), (f"{args.workers} workers", args.workers))
    }
    for batches in streams.values():  # warm-up: the pool's first batch, the model's first step
        step(batches.next_batch(args.batch)[0])
    rates: dict[str, list[float]] = {name: [] for name in streams}
    for index in range(args.rounds):
        names = list(streams) if index % 2 == 0 else list(streams)[::-1]
        seen = {}
        for name in names:
            seconds, seen[name] = timed(streams[name], step, args.batches, args.batch)
            rates[name].append(args.batches / seconds)
        first, second = seen.values()
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True)), "batches differ"
    for batches in streams.values():
        batches.close()
    inline, pooled = rates
    ratio = statistics.median(b / a for a, b in zip(rates[inline], rates[pooled], strict=True))
    step_text = f"{args.step_ms:.0f} ms sleep" if kind == "gpu-like" else "small DiT AdamW step"
    print(f"  {kind} step ({step_text}), batch {args.batch}:")
    for name, values in rates.items():
        print(f"    {name:10s} {statistics.median(values):6.2f} batches/s median")
    print(f"    ratio {pooled} / inline: {ratio:.2f}x (median of paired rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--step-ms", type=float, default=60.0, help="the gpu-like step's wait")
    parser.add_argument("--kinds", nargs="+", default=["gpu-like", "cpu"])
    args = parser.parse_args()
    print(
        f"stream decode: {args.images} JPEGs {args.width}x{args.height} -> {args.resolution} px, "
        f"{torch.get_num_threads()} torch threads"
    )
    with tempfile.TemporaryDirectory() as folder:
        spec = write_jpeg_shards(Path(folder), args.images, args.width, args.height)
        for kind in args.kinds:
            compare(kind, spec, args)


if __name__ == "__main__":
    main()
