"""InceptionV3 (FID) feature throughput on CPU: today's path against the optimized one, paired.

Arms (same images, same threads, interleaved rounds; the best of each arm's rounds is kept):
  reference  the TorchScript network as loaded, `torch.no_grad`, batch 50 (hetdiff <= 0.1)
  optimized  `hetdiff.metrics.fid.inception_features`: frozen graph (batch norm folded into the
             convolutions), `torch.inference_mode`, channels-last input, batch `--batch`
The features must agree to 1e-4 relative (max |a - b| / max |b|); the ratio of images/s is
the number the issue asks for (target >= 2x).

    python benchmarks/eval_speed.py --n 100 --rounds 3
"""

from __future__ import annotations

import argparse
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=fid.INCEPTION_BATCH)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
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
    ref, opt = feats["reference"], feats["optimized"]
    rel = float((opt - ref).abs().max() / ref.abs().max())
    speed = {name: args.n / min(t) for name, t in times.items()}
    print(f"InceptionV3 pool3 features, {args.n} images of {args.resolution} px, "
          f"{args.threads} threads, {args.rounds} interleaved rounds, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("| arm | images/s (best round) | all rounds, s |")
    print("|---|---|---|")
    for name in ("reference", "optimized"):
        rounds = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"| {name} | {speed[name]:.2f} | {rounds} |")
    print(
        f"speed-up {speed['optimized'] / speed['reference']:.2f}x (target >= 2x); "
        f"features max relative difference {rel:.2e} (must be <= 1e-4)"
    )
    if rel > 1e-4:
        raise SystemExit("optimized features differ from the reference by more than 1e-4")


if __name__ == "__main__":
    main()
