"""Per-shard image features: each shard's features written once, so a killed run resumes.

For shard ``NAME`` of a shard spec (``hetdiff.data.shards``) the features folder gets:

- ``NAME.npy``: ``(n, D)`` float16, row i the encoder's output for the shard's i-th sample;
- ``NAME.keys.txt``: the n sample keys, one a line, in the same order;
- ``NAME.json``: ``{"shard", "encoder", "count", "dim", "shard_sha256", "features_sha256"}``,
  written last: a shard counts as done when its JSON exists and names the same encoder.

Each file is written atomically (``hetdiff.io.atomic_path``). Work is split by whole shards:
rank r of w processes takes shards r, r + w, r + 2w, ... of the spec's list. The same image
always gives the same row whatever the process count: images are decoded one by one (center
square, RGB, resized with Pillow to the encoder's input side) and encoded in fixed batches
that restart at each shard. With ``decode_workers`` > 0 a pool of threads decodes up to two
batches ahead of the encoder (Pillow releases the GIL), in order: the same rows.
``features.json`` (:func:`write_feature_index`) lists every shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hetdiff.data.ahead import map_ahead
from hetdiff.data.features import Encoder
from hetdiff.data.shards import (
    ShardSample,
    ShardSet,
    decode_square,
    iter_shard,
    parse_shard_spec,
    resize_square,
    shard_name,
)
from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_path, atomic_write_json, atomic_write_text

INDEX_FILE = "features.json"
DEFAULT_INPUT_SIDE = 224


def input_side(encoder: Encoder) -> int:
    """The side images are resized to before encoding: the encoder's own input size."""
    for attribute in ("resolution", "size"):
        value = getattr(encoder, attribute, None)
        if isinstance(value, int):
            return value
    return DEFAULT_INPUT_SIDE


def shard_meta(folder: str | Path, shard: str) -> dict[str, Any] | None:
    """The ``NAME.json`` of a finished shard, or None."""
    path = Path(folder) / f"{shard_name(shard)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_encoder(meta: dict[str, Any], encoder_key: str, folder: str | Path) -> None:
    """One-line error when finished features come from another encoder."""
    if meta["encoder"] != encoder_key:
        raise HetdiffError(
            f"features of shard {meta['shard']} in {folder} come from encoder {meta['encoder']}, "
            f"not {encoder_key}; use another --out or the encoder {meta['encoder']}"
        )


def decoded_images(
    samples: Iterable[ShardSample], shard: str, side: int, pool: Executor | None, ahead: int
) -> Iterator[tuple[str, np.ndarray]]:
    """(key, (side, side, 3) uint8) of each sample, in order; with ``pool``, up to ``ahead``
    samples are being decoded while the caller works (``hetdiff.data.ahead.map_ahead``)."""

    def decode(sample: ShardSample) -> np.ndarray:
        return resize_square(decode_square(sample, shard, rgb=True), side)

    for sample, image in map_ahead(decode, samples, pool, ahead):
        yield sample.key, image


def encode_shard(
    shard_set: ShardSet,
    shard: str,
    encoder: Encoder,
    folder: str | Path,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
    pool: Executor | None = None,
) -> dict[str, Any]:
    """Encode every sample of ``shard`` and write its three files (module docstring); returns
    the shard's JSON record. ``on_batch(n)`` is called after each batch of n images; ``pool``
    (threads) decodes up to two batches ahead."""
    side = input_side(encoder)
    digest = hashlib.sha256()
    keys: list[str] = []
    rows: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float()
        features = encoder.encode(pixels * (2.0 / 255.0) - 1.0).numpy()
        if not np.isfinite(features).all():
            raise HetdiffError(f"encoder {encoder.key} gave non-finite features on shard {shard}")
        rows.append(features.astype(np.float16))
        if on_batch is not None:
            on_batch(len(batch))
        batch.clear()

    samples = iter_shard(shard_set, shard, digest)
    for key, image in decoded_images(samples, shard, side, pool, 2 * batch_size):
        keys.append(key)
        batch.append(image)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not keys:
        raise HetdiffError(f"shard {shard} holds no samples; remove it from the list")
    features = np.concatenate(rows)
    name = shard_name(shard)
    folder = Path(folder)
    with atomic_path(folder / f"{name}.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, features)
    atomic_write_text(folder / f"{name}.keys.txt", "\n".join(keys) + "\n")
    meta = {
        "shard": shard,
        "encoder": encoder.key,
        "count": len(keys),
        "dim": int(features.shape[1]),
        "shard_sha256": digest.hexdigest(),
        "features_sha256": hashlib.sha256(features.tobytes()).hexdigest(),
    }
    atomic_write_json(folder / f"{name}.json", meta)
    return meta


def extract_features(
    spec: str,
    encoder: Encoder,
    folder: str | Path,
    rank: int = 0,
    world: int = 1,
    *,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    decode_workers: int = 0,
) -> tuple[list[str], list[str]]:
    """Encode this rank's shards of ``spec`` (shards ``rank::world``) into ``folder``, skipping
    finished ones; ``batch_size`` images per encoder call and ``decode_workers`` decoding
    threads (``FeatureSettings``; 0 decodes inline). Returns ``(computed, skipped)`` shard
    lists. Refuses a folder whose finished features come from another encoder."""
    shard_set = parse_shard_spec(spec)
    computed, skipped = [], []
    pool = ThreadPoolExecutor(decode_workers, "hetdiff-decode") if decode_workers else None
    try:
        for shard in shard_set.shards[rank::world]:
            meta = shard_meta(folder, shard)
            if meta is not None:
                check_encoder(meta, encoder.key, folder)
                skipped.append(shard)
                continue
            encode_shard(shard_set, shard, encoder, folder, batch_size, on_batch, pool)
            computed.append(shard)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    return computed, skipped


def write_feature_index(spec: str, encoder_key: str, folder: str | Path) -> dict[str, Any]:
    """Write ``folder/features.json`` (``{"spec", "encoder", "total", "dim", "shards": [...]}``)
    once every shard of ``spec`` is done; one-line error naming a missing shard."""
    shard_set = parse_shard_spec(spec)
    records = []
    for shard in shard_set.shards:
        meta = shard_meta(folder, shard)
        if meta is None:
            raise HetdiffError(f"shard {shard} has no features in {folder}; rerun hetdiff features")
        check_encoder(meta, encoder_key, folder)
        records.append(meta)
    index = {
        "spec": spec,
        "encoder": encoder_key,
        "total": sum(r["count"] for r in records),
        "dim": records[0]["dim"],
        "shards": records,
    }
    atomic_write_json(Path(folder) / INDEX_FILE, index)
    return index


def read_feature_index(folder: str | Path) -> dict[str, Any]:
    """The ``features.json`` of a features folder (one-line error when absent)."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise HetdiffError(f"{path} not found; run `hetdiff features --out {folder}` first")
    return json.loads(path.read_text())


def load_shard_features(folder: str | Path, meta: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """``(features (n, D) float16 memory-mapped, keys)`` of one finished shard."""
    name = shard_name(meta["shard"])
    features = np.load(Path(folder) / f"{name}.npy", mmap_mode="r")
    keys = (Path(folder) / f"{name}.keys.txt").read_text().splitlines()
    if features.shape[0] != meta["count"] or len(keys) != meta["count"]:
        raise HetdiffError(f"features of shard {meta['shard']} in {folder} are inconsistent")
    return features, keys
