"""Scale benchmark: two-stage k-means of 1M memory-mapped 1280-d vectors into 1024 fine and 8
coarse clusters on 2 cores. Prints wall time and peak resident memory.

Target (issue 4): under 5 minutes and under 8 GB.

The data is a synthetic two-level Gaussian mixture written to a ``.npy`` file in chunks (never
held in memory): 8 groups, each of 128 sub-centres, so the coarse clusters can be checked
against the 8 groups (NMI printed as a sanity check). The clustering reads the file memory-
mapped, one chunk at a time.

    .venv/bin/python benchmarks/clustering_scale.py [--n 1000000] [--dim 1280] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of vectors")
    parser.add_argument("--dim", type=int, default=1280, help="vector width")
    parser.add_argument("--fine", type=int, default=1024, help="fine clusters")
    parser.add_argument("--k", type=int, default=8, help="coarse clusters")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (faiss/BLAS)")
    parser.add_argument("--niter", type=int, default=20, help="k-means iterations per stage")
    parser.add_argument("--workdir", default=None, help="where the .npy goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated .npy file")
    return parser.parse_args()


def peak_rss_gib() -> float:
    """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_mixture(path: Path, n: int, dim: int, groups: int = 8, sub: int = 128) -> None:
    """Write ``n`` float32 rows of a two-level Gaussian mixture to ``path`` (.npy), in chunks.

    Group centres ~ N(0, 4^2 I), sub-centres = group + N(0, 1), rows = sub-centre + N(0, 0.5^2).
    Row i belongs to group ``i % groups`` (so groups are equal-sized and interleaved).
    """
    import numpy as np

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(groups, dim)).astype(np.float32)
    subs = (centres[:, None, :] + rng.normal(size=(groups, sub, dim))).astype(np.float32)
    with open(path, "wb") as handle:
        header = {"descr": "<f4", "fortran_order": False, "shape": (n, dim)}
        np.lib.format.write_array_header_1_0(handle, header)
        chunk = 65536
        for start in range(0, n, chunk):
            rows = np.arange(start, min(n, start + chunk))
            group = rows % groups
            which = rng.integers(0, sub, size=len(rows))
            block = subs[group, which] + rng.standard_normal((len(rows), dim), np.float32) * 0.5
            handle.write(block.astype(np.float32).tobytes())


def main() -> int:
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import faiss
    import numpy as np

    from hetdiff.data.clustering import normalized_mutual_info, two_stage_kmeans

    faiss.omp_set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hetdiff-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"vectors_{args.n}x{args.dim}.npy"
    try:
        started = time.perf_counter()
        if not path.exists():
            write_mixture(path, args.n, args.dim)
        print(
            f"data: {args.n} x {args.dim} float32 ({path.stat().st_size / 2**30:.2f} GiB on disk) "
            f"in {time.perf_counter() - started:.1f} s; peak RSS so far {peak_rss_gib():.2f} GiB"
        )
        x = np.load(path, mmap_mode="r")
        started = time.perf_counter()
        result = two_stage_kmeans(x, args.k, args.fine, seed=0, niter=args.niter)
        wall = time.perf_counter() - started
        groups = np.arange(args.n) % 8
        sizes = np.bincount(result.clusters, minlength=args.k)
        print(f"two-stage k-means ({args.fine} fine -> {args.k} coarse, {args.niter} iterations,")
        print(f"  {args.threads} threads): wall {wall:.1f} s, peak RSS {peak_rss_gib():.2f} GiB")
        print(f"  coarse sizes {sizes.tolist()}")
        print(
            f"  NMI of coarse clusters vs the 8 generating groups: {normalized_mutual_info(groups, result.clusters):.4f}"
        )
        ok = wall < 300 and peak_rss_gib() < 8
        print(f"target (< 300 s, < 8 GiB): {'met' if ok else 'MISSED'}")
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
