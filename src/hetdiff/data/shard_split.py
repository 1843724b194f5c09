"""Cluster per-shard features at scale and write one shard set per cluster (``hetdiff split``).

1. Subsample: ``m = min(subsample, N)`` rows drawn uniformly without replacement (seeded) from
   all shards' feature files, read shard by shard through memory maps.
2. Two-stage k-means on the subsample (``hetdiff.data.clustering.two_stage_kmeans``): fine
   centroids, then K coarse clusters of them.
3. Streaming assignment: every shard's features, in chunks, go to their nearest fine centroid
   and so to ``fine_to_coarse[fine]``; memory holds one chunk plus one int16 per sample.
4. Split: each shard is read again, each sample checked against its features' key, and written
   to ``OUT/cluster-k/{00000..}.tar`` with its caption and metadata (``ShardSetWriter``); each
   cluster folder gets ``index.json`` (keys, counts, shard digests), so an island downloads
   only its own folder and trains from ``wds:OUT/cluster-k``.

``OUT/split.json`` is written last: K, fine, encoder, subsample size, seed, total and
per-cluster counts, the data shards with their sha256 digests, the features index digest, and
the centroids (``OUT/centroids.npz``, read without pickle, sha256 in the JSON).

Resume. Every file is written whole (atomically for local paths, one put for URLs). The run
keeps ``OUT/.split-progress/``: ``plan.json`` (the split's inputs and settings), the fitted
centroids, and one marker per written cluster shard naming its sha256. A rerun with the same
plan reuses the centroids (no k-means), reads the data shards again and skips every cluster
shard whose marker matches the bytes it would write, so it ends with the same files as an
uninterrupted run; the progress folder is removed after ``split.json``. Another plan starts
over. Tests only: ``$HETDIFF_TEST_KILL_AT`` = ``split-shard:N`` SIGKILLs the run after its Nth
cluster shard write.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import signal
from pathlib import Path
from typing import Any

import numpy as np

from hetdiff.data.clustering import check_cluster_counts, nearest_centroid, two_stage_kmeans
from hetdiff.data.export import ShardSetWriter
from hetdiff.data.shard_features import INDEX_FILE, load_shard_features, read_feature_index
from hetdiff.data.shards import iter_shard, parse_shard_spec, shard_name
from hetdiff.errors import HetdiffError
from hetdiff.io import read_url_bytes, write_url_bytes

SPLIT_FILE = "split.json"
PROGRESS_DIR = ".split-progress"
ASSIGN_CHUNK = 65536
KILL_ENV = "HETDIFF_TEST_KILL_AT"  # tests: "split-shard:N"


def subsample_features(folder: str | Path, index: dict[str, Any], count: int, seed: int):
    """``(min(count, N), D)`` float32: rows drawn uniformly (seeded) over all shards."""
    total = index["total"]
    picked = np.sort(
        np.random.default_rng(seed).choice(total, size=min(count, total), replace=False)
    )
    out = np.empty((len(picked), index["dim"]), dtype=np.float32)
    start = filled = 0
    for meta in index["shards"]:
        lo, hi = np.searchsorted(picked, [start, start + meta["count"]])
        if hi > lo:
            features, _ = load_shard_features(folder, meta)
            out[filled : filled + hi - lo] = features[picked[lo:hi] - start]
            filled += hi - lo
        start += meta["count"]
    return out


def assign_shards(
    folder: str | Path,
    index: dict[str, Any],
    fine_centroids: np.ndarray,
    fine_to_coarse: np.ndarray,
) -> dict[str, np.ndarray]:
    """Streaming pass: shard name -> ``(n,)`` int16 cluster of each sample, in chunks of
    ``ASSIGN_CHUNK`` rows: ``cluster = fine_to_coarse[argmin_j |x - c_j|^2]``."""
    clusters = {}
    for meta in index["shards"]:
        features, _ = load_shard_features(folder, meta)
        labels = np.empty(meta["count"], dtype=np.int16)
        for start in range(0, meta["count"], ASSIGN_CHUNK):
            chunk = np.asarray(features[start : start + ASSIGN_CHUNK], dtype=np.float32)
            labels[start : start + len(chunk)] = fine_to_coarse[
                nearest_centroid(chunk, fine_centroids)
            ]
        clusters[shard_name(meta["shard"])] = labels
    return clusters


def split_shards(
    spec: str,
    features: str | Path,
    out: str,
    k: int,
    *,
    fine: int | None,
    subsample: int,
    seed: int,
    per_shard: int,
) -> dict[str, Any]:
    """Cluster the features in ``features`` (``hetdiff features`` of ``spec``) into ``k``
    clusters and write each cluster's samples under ``out/cluster-k/`` (module docstring);
    a killed run resumes (module docstring). Returns the ``split.json`` record. One-line
    errors name the shard (and key) that differs from what the features were computed on.
    Settings and their defaults: ``hetdiff.config.shards.SplitSettings``."""
    index = read_feature_index(features)
    shard_set = parse_shard_spec(spec)
    listed = {shard_name(m["shard"]): m for m in index["shards"]}
    names = [shard_name(s) for s in shard_set.shards]
    if sorted(names) != sorted(listed):
        extra = sorted(set(names) ^ set(listed))
        raise HetdiffError(
            f"shards of {spec} and the features in {features} differ (e.g. {extra[0]}); "
            "rerun `hetdiff features` on this data"
        )
    index_bytes = (Path(features) / INDEX_FILE).read_bytes()
    plan = {
        "source_spec": spec,
        "k": k,
        "fine": fine,
        "subsample": subsample,
        "seed": seed,
        "per_shard": per_shard,
        "features_index_sha256": hashlib.sha256(index_bytes).hexdigest(),
    }
    progress = _Progress(out, plan)
    fitted = progress.centroids()
    if fitted is None:
        sample = subsample_features(features, index, subsample, seed)
        fine = fine or min(1024, max(k, len(sample) // 20))
        check_cluster_counts(len(sample), k, fine)
        result = two_stage_kmeans(sample, k, fine, seed=seed)
        fitted = (result.fine_centroids, result.fine_to_coarse, len(sample))
        progress.save_centroids(*fitted)
    fine_centroids, fine_to_coarse, sampled = fitted
    fine = len(fine_centroids)
    clusters = assign_shards(features, index, fine_centroids, fine_to_coarse)
    writers = [
        ShardSetWriter(
            posixpath.join(out, f"cluster-{c}"),
            per_shard,
            "wds",
            progress.written,
            progress.on_written,
        )  # fmt: skip
        for c in range(k)
    ]
    for shard in shard_set.shards:
        meta = listed[shard_name(shard)]
        _, keys = load_shard_features(features, meta)
        labels = clusters[shard_name(shard)]
        digest = hashlib.sha256()
        row = -1
        for row, item in enumerate(iter_shard(shard_set, shard, digest)):
            if row >= len(keys) or item.key != keys[row]:
                expected = keys[row] if row < len(keys) else "(end of shard)"
                raise HetdiffError(
                    f"shard {shard} key {item.key} differs from its features ({expected}); the "
                    "shard changed since `hetdiff features`: rerun it"
                )
            writers[int(labels[row])].write(item)
        if row + 1 != len(keys) or digest.hexdigest() != meta["shard_sha256"]:
            raise HetdiffError(
                f"shard {shard} changed since `hetdiff features` (sha256 differs); rerun it"
            )
    extra = {"encoder": index["encoder"], "source_spec": spec}
    indexes = [writer.close({**extra, "cluster": c}) for c, writer in enumerate(writers)]
    centroids = io.BytesIO()
    np.savez(centroids, fine_centroids=fine_centroids, fine_to_coarse=fine_to_coarse)
    write_url_bytes(posixpath.join(out, "centroids.npz"), centroids.getvalue())
    record = {
        "format": "hetdiff-split/1",
        "source_spec": spec,
        "encoder": index["encoder"],
        "k": k,
        "fine": fine,
        "subsample": sampled,
        "seed": seed,
        "total": index["total"],
        "counts": [ix["total"] for ix in indexes],
        "clusters": [f"cluster-{c}" for c in range(k)],
        "source_shards": {m["shard"]: m["shard_sha256"] for m in index["shards"]},
        "features_index_sha256": hashlib.sha256(index_bytes).hexdigest(),
        "centroids_sha256": hashlib.sha256(centroids.getvalue()).hexdigest(),
    }
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    write_url_bytes(posixpath.join(out, SPLIT_FILE), text.encode())
    progress.remove()
    return record


class _Progress:
    """``OUT/.split-progress/``: the plan, the fitted centroids and a marker per written
    cluster shard (module docstring). A folder of another plan is cleared on open."""

    def __init__(self, out: str, plan: dict[str, Any]) -> None:
        import fsspec

        self.root = posixpath.join(out.rstrip("/"), PROGRESS_DIR)
        self.fs, self.path = fsspec.core.url_to_fs(self.root)
        self.plan = json.dumps(plan, sort_keys=True)
        self.writes = 0
        plan_url = posixpath.join(self.root, "plan.json")
        if self.fs.exists(self.path) and (
            not self.fs.exists(posixpath.join(self.path, "plan.json"))
            or read_url_bytes(plan_url, "split plan").decode() != self.plan
        ):
            self.remove()
        if not self.fs.exists(posixpath.join(self.path, "plan.json")):
            write_url_bytes(plan_url, self.plan.encode())

    def centroids(self) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(fine centroids, fine -> coarse, subsample size) of an earlier run, or None."""
        url = posixpath.join(self.root, "centroids.npz")
        if not self.fs.exists(posixpath.join(self.path, "centroids.npz")):
            return None
        with np.load(io.BytesIO(read_url_bytes(url, "split centroids")), allow_pickle=False) as f:
            return f["fine_centroids"], f["fine_to_coarse"], int(f["subsample"])

    def save_centroids(self, fine: np.ndarray, fine_to_coarse: np.ndarray, sampled: int) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, fine_centroids=fine, fine_to_coarse=fine_to_coarse, subsample=sampled)
        write_url_bytes(posixpath.join(self.root, "centroids.npz"), buffer.getvalue())

    def _marker(self, url: str) -> str:
        cluster, name = url.rstrip("/").split("/")[-2:]
        return posixpath.join(self.root, f"{cluster}--{name}.sha256")

    def written(self, url: str, digest: str) -> bool:
        """Whether an earlier run of this plan wrote ``url`` with sha256 ``digest``."""
        import fsspec

        marker = self._marker(url)
        fs, path = fsspec.core.url_to_fs(marker)
        if not fs.exists(path) or not fsspec.core.url_to_fs(url)[0].exists(url):
            return False
        return read_url_bytes(marker, "split marker").decode() == digest

    def on_written(self, url: str, digest: str) -> None:
        write_url_bytes(self._marker(url), digest.encode())
        self.writes += 1
        if os.environ.get(KILL_ENV) == f"split-shard:{self.writes}":
            os.kill(os.getpid(), signal.SIGKILL)

    def remove(self) -> None:
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)
