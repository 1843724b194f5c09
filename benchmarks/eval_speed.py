"""InceptionV3 (FID) feature throughput on CPU: today's path against the optimized one, paired.

Arms (same images, same threads, interleaved rounds; the best of each arm's rounds is kept):
  reference  the TorchScript network as loaded, `torch.no_grad`, batch 50 (hetdiff <= 0.1)
  optimized  `hetdiff.metrics.fid.inception_features`: the network rebuilt with batch norm folded
             into the convolutions, each convolution + ReLU one oneDNN kernel on weights packed
             once, `torch.inference_mode`, channels-last, batch `--batch`
The features must agree to 1e-4 relative (max |a - b| / max |b|); the ratio of images/s is
the number the issue asks for (target >= 2x).

By default both arms run in this one process, so they share its allocator setting (whatever
the environment gives). ``--processes`` runs each arm in a fresh process per round, as users
run them: the reference as hetdiff <= 0.1 ran (no process settings), the optimized arm with
what the ``hetdiff`` command now sets for itself and its children (``thread_env``: the same
thread count, plus glibc keeping freed memory, ``hetdiff.allocator``). Model loading is a
warm-up outside the timing in both modes.

    python benchmarks/eval_speed.py --n 100 --rounds 3
    python benchmarks/eval_speed.py --n 100 --rounds 3 --processes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from hetdiff.metrics import fid


def reference_features(images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """What `inception_features` did before: the network as loaded, no_grad, batches of 50."""
    model = torch.jit.load(str(fid.inception_path())).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = fid.to_inception_input(images[start : start + batch_size])
            out.append(model(batch).reshape(len(batch), -1).double())
    return torch.cat(out)


def child(args: argparse.Namespace) -> None:
    """One arm in this process (``--arm``): warm up untimed, time ``n`` images, save features."""
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.n, 1, args.resolution, args.resolution, generator=gen) * 2 - 1

    def run(x: torch.Tensor) -> torch.Tensor:
        if args.arm == "reference":
            return reference_features(x)
        return torch.from_numpy(fid.inception_features(x, batch_size=args.batch))

    run(images[:4])
    t0 = time.perf_counter()
    feats = run(images)
    print(json.dumps({"seconds": time.perf_counter() - t0}))
    torch.save(feats, args.save)


def processes(args: argparse.Namespace) -> None:
    """Each arm in its own process per round, as users run it: the reference without, the
    optimized arm with what the ``hetdiff`` command sets for every process (threads, the
    allocator's ``MALLOC_*`` variables: ``hetdiff.threads.thread_env``)."""
    from hetdiff.threads import thread_env

    times: dict[str, list[float]] = {"reference": [], "optimized": []}
    feats = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for arm in times:
                base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
                env = thread_env(1, base) if arm == "optimized" else base
                save = f"{tmp}/{arm}.pt"
                cmd = [sys.executable, __file__, "--arm", arm, "--save", save, "--n", str(args.n),
                       "--batch", str(args.batch), "--resolution", str(args.resolution),
                       "--threads", str(args.threads)]  # fmt: skip
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                times[arm].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
                feats[arm] = torch.load(save)
    report(args, times, feats, "one process per arm and round")


def report(args, times, feats, how: str) -> None:
    ref, opt = feats["reference"], feats["optimized"]
    rel = float((opt - ref).abs().max() / ref.abs().max())
    speed = {name: args.n / min(t) for name, t in times.items()}
    paired = statistics.median(
        r / o for r, o in zip(times["reference"], times["optimized"], strict=True)
    )
    print(f"InceptionV3 pool3 features, {args.n} images of {args.resolution} px, "
          f"{args.threads} threads, {args.rounds} interleaved rounds ({how}), "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("| arm | images/s (best round) | all rounds, s |")
    print("|---|---|---|")
    for name in ("reference", "optimized"):
        rounds = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"| {name} | {speed[name]:.2f} | {rounds} |")
    print(
        f"speed-up {speed['optimized'] / speed['reference']:.2f}x best rounds, "
        f"{paired:.2f}x median of paired rounds (target >= 2x); "
        f"features max relative difference {rel:.2e} (must be <= 1e-4)"
    )
    if rel > 1e-4:
        raise SystemExit("optimized features differ from the reference by more than 1e-4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=fid.INCEPTION_BATCH)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--processes", action="store_true",
                        help="each arm in its own process per round, as users run it")  # fmt: skip
    parser.add_argument("--arm", choices=("reference", "optimized"), help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        return child(args)
    if args.processes:
        return processes(args)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.n, 1, args.resolution, args.resolution, generator=gen) * 2 - 1
    fid.inception_features(images[:4], batch_size=args.batch)  # load + freeze once, not timed
    reference_features(images[:4])
    times: dict[str, list[float]] = {"reference": [], "optimized": []}
    feats = {}
    for _ in range(args.rounds):
        for name in ("reference", "optimized"):
            t0 = time.perf_counter()
            if name == "reference":
                feats[name] = reference_features(images)
            else:
                feats[name] = torch.from_numpy(
                    fid.inception_features(images, batch_size=args.batch)
                )
            times[name].append(time.perf_counter() - t0)
    report(args, times, feats, "one process")


if __name__ == "__main__":
    main()
