"""A sharded source (``wds:``, ``parquet:``, ``hf:``) read into memory as a :class:`RawSource`,
so ``load_dataset("wds:cluster-2")`` trains an expert exactly as a built-in set does.

Samples are taken in shard order, then stored order; a sample's local id is its position in
that listing. Classes come from each sample's ``"class"`` (its ``.json`` member, or a ``class``
column), in order of first appearance; data without classes form the one class ``"image"``.
Images are center-cropped squares; if sizes differ, all are resized (Pillow, bilinear,
antialiased) to the smallest side. They stay 8-bit gray when every image is gray-ish.

This holds the shards' pixels in memory (one cluster's share is meant to fit); the streaming
reader, whose memory is its shuffle buffer, is ``hetdiff.data.shard_stream``.
"""

from __future__ import annotations

import numpy as np

from hetdiff.data.shards import decode_square, iter_shard, parse_shard_spec, resize_square
from hetdiff.data.sources import RawSource
from hetdiff.errors import HetdiffError


def read_shard_source(spec: str, name: str | None = None) -> RawSource:
    """Decode every sample of the shard spec ``spec`` into a :class:`RawSource` named
    ``name`` (default ``spec``); keys are returned by :func:`shard_keys`."""
    shard_set = parse_shard_spec(spec)
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    classes: dict[str, int] = {}
    all_gray = True
    for shard in shard_set.shards:
        for sample in iter_shard(shard_set, shard):
            array = decode_square(sample, shard)
            class_name = str(sample.meta.get("class", "image"))
            labels.append(classes.setdefault(class_name, len(classes)))
            arrays.append(array)
            all_gray &= array.shape[2] == 1
    if not arrays:
        raise HetdiffError(f"{spec} holds no samples; check the shards")
    side = min(array.shape[0] for array in arrays)
    channels = 1 if all_gray else 3
    pixels = np.empty((len(arrays), channels, side, side), dtype=np.uint8)
    for row, array in enumerate(arrays):
        if array.shape[2] != channels:
            array = np.repeat(array, channels, axis=2)
        pixels[row] = resize_square(array, side).transpose(2, 0, 1)
    return RawSource(
        name=name or spec,
        pixels=pixels,
        levels=255,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=tuple(classes),
        local_ids=np.arange(len(arrays), dtype=np.int64),
    )


def shard_keys(spec: str) -> list[str]:
    """Every sample key of ``spec``, in the order :func:`read_shard_source` reads them."""
    shard_set = parse_shard_spec(spec)
    return [s.key for shard in shard_set.shards for s in iter_shard(shard_set, shard)]
