"""``hetdiff.data.shard_features``: images decoded ahead by a thread pool come in order and
equal inline decoding; a corrupt image fails in its turn, after the images before it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hetdiff.data.export import ShardSetWriter, png_bytes
from hetdiff.data.shard_features import decoded_images
from hetdiff.data.shards import ShardSample, iter_shard, parse_shard_spec
from hetdiff.errors import HetdiffError


def _shard(root, corrupt: int | None = None) -> tuple[list[ShardSample], str]:
    writer = ShardSetWriter(str(root), 40)  # one shard of 40
    rng = np.random.default_rng(0)
    for i in range(40):
        pixels = rng.integers(0, 256, (3, 12, 10), dtype=np.uint8)
        image = b"\x89PNG broken" if i == corrupt else png_bytes(pixels)
        writer.write(ShardSample(f"k/{i:03d}", image, "png", f"c {i}", {}))
    writer.close()
    shard_set = parse_shard_spec(f"wds:{root}")
    shard = shard_set.shards[0]
    return list(iter_shard(shard_set, shard)), shard


@pytest.mark.parametrize("workers, ahead", [(1, 1), (3, 8), (2, 100)])
def test_pooled_decoding_equals_inline_in_order(tmp_path, workers, ahead) -> None:
    samples, shard = _shard(tmp_path)
    inline = list(decoded_images(samples, shard, 8, None, ahead))
    with ThreadPoolExecutor(workers) as pool:
        pooled = list(decoded_images(samples, shard, 8, pool, ahead))
    assert [key for key, _ in pooled] == [key for key, _ in inline] == [s.key for s in samples]
    for (_, want), (_, got) in zip(inline, pooled, strict=True):
        assert got.shape == (8, 8, 3) and np.array_equal(got, want)


def test_a_corrupt_image_fails_in_its_turn(tmp_path) -> None:
    samples, shard = _shard(tmp_path, corrupt=25)
    seen = []
    with ThreadPoolExecutor(2) as pool, pytest.raises(HetdiffError, match="k__025: corrupt"):
        for key, _ in decoded_images(samples, shard, 8, pool, 16):  # 25 is decoded by 9's turn
            seen.append(key)
    assert [key[-3:] for key in seen] == [f"{i:03d}" for i in range(25)]
