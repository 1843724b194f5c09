"""Data at scale on synthetic shards: feature throughput (1 vs 2 processes), streaming
assignment throughput, and peak resident memory of the clustering pass at N samples.

1. Feature extraction: ``--images`` random RGB PNGs (``--side`` px) in ``--shards`` tar shards;
   ``hetdiff features`` single-process, then under ``torchrun --nproc_per_node 2``; images/s
   for each and the scaling ratio (2 processes / 1).
2. Clustering at each N of ``--sizes``: synthetic float16 feature files (``--dim`` wide, in
   shards of ``--rows-per-shard``, a Gaussian mixture of 8 groups) and a ``features.json``
   index are written; a child process runs what ``hetdiff split`` runs before writing shards:
   the subsample (``--subsample`` rows), two-stage k-means (``--fine`` then 8), and the
   streaming assignment over every shard. It reports the assignment's rows/s and its peak RSS
   (``ru_maxrss``), printed beside the features' own size on disk: peak RSS must not grow with
   N beyond that (the pass holds one chunk plus 2 bytes per sample).

    .venv/bin/python benchmarks/data_scale.py --sizes 100000 1000000      (the issue's numbers)
    .venv/bin/python benchmarks/data_scale.py --images 64 --shards 4 --sizes 2000 --dim 16 \\
        --fine 16 --subsample 1000                                       (a quick check)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def write_image_shards(folder: Path, images: int, shards: int, side: int) -> str:
    """Random RGB PNG samples with captions in ``shards`` tars; returns the ``wds:`` spec."""
    from PIL import Image
    from webdataset import TarWriter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_shard = -(-images // shards)
    for shard in range(shards):
        with TarWriter(str(folder / f"{shard:05d}.tar"), encoder=False, mtime=0.0) as writer:
            for row in range(shard * per_shard, min(images, (shard + 1) * per_shard)):
                buffer = io.BytesIO()
                pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(buffer, format="PNG")
                writer.write({"__key__": f"s{row:08d}", "png": buffer.getvalue(), "txt": b"noise"})
    return f"wds:{folder}/{{00000..{shards - 1:05d}}}.tar"


def feature_throughput(spec: str, images: int, encoder: str, work: Path, procs: int) -> float:
    """Images/s of ``hetdiff features`` with ``procs`` processes (1 thread each)."""
    out = work / f"features-{procs}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["features", "--data", spec, "--encoder", encoder, "--out", str(out), "--quiet"]
    if procs == 1:
        command = [str(BIN / "hetdiff"), *args]
    else:
        command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(procs)]
        command += ["-m", "hetdiff", *args]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return images / (time.perf_counter() - start)


def write_feature_shards(folder: Path, n: int, dim: int, rows_per_shard: int) -> int:
    """Synthetic per-shard float16 features and ``features.json``; returns bytes on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(8, dim)).astype(np.float32) * 4
    records, size = [], 0
    for shard, start in enumerate(range(0, n, rows_per_shard)):
        count = min(rows_per_shard, n - start)
        rows = centres[rng.integers(0, 8, size=count)] + rng.normal(size=(count, dim))
        name = f"{shard:05d}"
        np.save(folder / f"{name}.npy", rows.astype(np.float16))
        keys = "\n".join(f"{name}/s{start + i:08d}" for i in range(count)) + "\n"
        (folder / f"{name}.keys.txt").write_text(keys)
        size += (folder / f"{name}.npy").stat().st_size
        records.append({"shard": f"{name}.tar", "count": count, "dim": dim, "encoder": "synthetic"})
    index = {"spec": "synthetic", "encoder": "synthetic", "total": n, "dim": dim, "shards": records}
    (folder / "features.json").write_text(json.dumps(index))
    return size


def cluster_child(folder: str, subsample: int, fine: int) -> None:
    """In a fresh process: subsample, two-stage k-means, streaming assignment; print JSON."""
    from hetdiff.data.clustering import two_stage_kmeans
    from hetdiff.data.shard_features import read_feature_index
    from hetdiff.data.shard_split import assign_shards, subsample_features

    index = read_feature_index(folder)
    start = time.perf_counter()
    sample = subsample_features(folder, index, subsample, seed=0)
    result = two_stage_kmeans(sample, 8, fine, seed=0)
    fitted = time.perf_counter()
    clusters = assign_shards(folder, index, result.fine_centroids, result.fine_to_coarse)
    assigned = time.perf_counter()
    assert sum(len(c) for c in clusters.values()) == index["total"]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "fit_s": fitted - start,
                "assign_rows_per_s": index["total"] / (assigned - fitted),
                "peak_rss_mb": peak_kib / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images for feature throughput")
    parser.add_argument("--shards", type=int, default=8, help="image shards")
    parser.add_argument("--side", type=int, default=64, help="synthetic image side in px")
    parser.add_argument("--encoder", default="efficientnet-lite0@112")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1280, help="feature width for clustering")
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    parser.add_argument("--subsample", type=int, default=200_000)
    parser.add_argument("--fine", type=int, default=1024)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cluster_child(args.child, args.subsample, args.fine)
        return
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        spec = write_image_shards(work / "images", args.images, args.shards, args.side)
        one = feature_throughput(spec, args.images, args.encoder, work, 1)
        two = feature_throughput(spec, args.images, args.encoder, work, 2)
        print(
            f"features {args.encoder}, {args.images} images of {args.side}px in {args.shards} shards"
        )
        print(f"| processes | images/s |\n|---|---|\n| 1 | {one:.1f} |\n| 2 | {two:.1f} |")
        print(f"scaling ratio (2 / 1): {two / one:.2f}\n")
        print("| N | features on disk (MB) | assignment rows/s | k-means fit (s) | peak RSS (MB) |")
        print("|---|---|---|---|---|")
        for n in args.sizes:
            folder = work / f"features-{n}"
            size = write_feature_shards(folder, n, args.dim, args.rows_per_shard)
            command = [sys.executable, __file__, "--child", str(folder)]
            command += ["--subsample", str(args.subsample), "--fine", str(args.fine)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            stats = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"| {n} | {size / 2**20:.1f} | {stats['assign_rows_per_s']:.0f} | "
                f"{stats['fit_s']:.1f} | {stats['peak_rss_mb']:.0f} |"
            )
            for path in folder.iterdir():
                path.unlink()


if __name__ == "__main__":
    main()
