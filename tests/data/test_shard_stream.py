"""The shard stream: every key once per epoch, a restored state continues with exactly the
samples an unbroken stream gives (mid-shard, while the buffer drains, across epochs), memory
bounded by the buffer, and decoded images equal to the in-memory data set's, bit for bit."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from hetdiff.data.datasets import load_dataset
from hetdiff.data.export import ShardSetWriter, export_dataset, png_bytes
from hetdiff.data.shard_dataset import shard_keys
from hetdiff.data.shard_stream import ShardStream, scan_shards
from hetdiff.data.shards import ShardSample
from hetdiff.errors import HetdiffError

N = 1797  # sklearn digits


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("stream")
    export_dataset("digits", str(root / "wds"), shards=8, fmt="wds")
    return f"wds:{root / 'wds'}"


def test_every_key_once_per_epoch_in_a_new_order(spec) -> None:
    stream = ShardStream(spec, buffer_size=100, seed=1)
    keys = set(shard_keys(spec))
    epochs = [[stream.next_sample().key for _ in range(N)] for _ in range(2)]
    for epoch in epochs:
        assert Counter(epoch) == Counter(keys)  # each key exactly once
    assert epochs[0] != epochs[1]
    in_order = shard_keys(spec)
    assert epochs[0][:200] != in_order[:200]  # shuffled, not stored order
    other_seed = ShardStream(spec, buffer_size=100, seed=2)
    assert [other_seed.next_sample().key for _ in range(50)] != epochs[0][:50]


@pytest.mark.parametrize("cut", [0, 1, 150, 777, N - 50, N - 1, N, N + 333])
def test_restored_state_continues_with_the_same_samples(spec, cut) -> None:
    stream = ShardStream(spec, buffer_size=64, seed=5)
    for _ in range(cut):
        stream.next_sample()
    state = json.loads(json.dumps(stream.state_dict()))  # saved as JSON with the training state
    expected = [stream.next_sample().key for _ in range(600)]
    restored = ShardStream(spec, buffer_size=64, seed=5)
    restored.load_state_dict(state)
    assert [restored.next_sample().key for _ in range(600)] == expected


def test_memory_is_the_buffer(spec) -> None:
    stream = ShardStream(spec, buffer_size=37, seed=0)
    sizes = []
    for _ in range(N + 100):
        stream.next_sample()
        sizes.append(len(stream.state_dict()["buffer"]))
    assert max(sizes) == 37  # never more than the buffer (plus the sample handed out)
    assert min(sizes[N - 40 : N]) < 37  # it drains at the end of the epoch


@pytest.mark.parametrize("resolution", [8, 6])
def test_decoded_images_and_labels_equal_the_in_memory_data_set(spec, resolution) -> None:
    memory = load_dataset(spec, resolution=resolution)
    row_of = {key: row for row, key in enumerate(shard_keys(spec))}
    stream = ShardStream(spec, resolution=resolution, buffer_size=50, seed=0)
    assert stream.class_names == memory.class_names and stream.channels == memory.channels
    for item in (stream.decode(stream.next_sample()) for _ in range(300)):
        row = row_of[item.key]
        assert torch.equal(item.image, memory.images[row]), item.key
        assert item.label == int(memory.labels[row])


def test_classes_come_from_the_index_or_a_scan(spec, tmp_path) -> None:
    info = scan_shards(spec)  # the index lists classes
    assert info.total == N and len(info.class_names) == 10
    pattern = spec + "/{00000..00007}.tar"
    scanned = scan_shards(pattern)  # a brace pattern: one pass over the shards
    assert scanned.class_names == info.class_names and scanned.total == N


def _write(folder, prefix: str, pixels: np.ndarray) -> None:
    writer = ShardSetWriter(str(folder), 4)
    for i in range(12):
        writer.write(ShardSample(f"{prefix}/{i:03d}", png_bytes(pixels), "png", f"caption {i}"))
    writer.close()


def test_a_changed_shard_is_refused_on_resume(spec, tmp_path) -> None:
    image = load_dataset(spec).images[0]
    pixels = ((image + 1) * 127.5).round().clamp(0, 255).numpy().astype(np.uint8)
    _write(tmp_path / "few", "s", pixels)
    _write(tmp_path / "other", "t", pixels)
    stream = ShardStream(f"wds:{tmp_path / 'few'}", buffer_size=6, seed=0)
    for _ in range(3):
        stream.next_sample()
    state = stream.state_dict()
    shard = state["buffer"][0].split("/")[0]  # e.g. "00001": the shard of a buffered key
    other = (tmp_path / "other" / f"{shard}.tar").read_bytes()
    (tmp_path / "few" / f"{shard}.tar").write_bytes(other)  # same name, other members
    with pytest.raises(HetdiffError, match=r"no longer in .* start over"):
        ShardStream(f"wds:{tmp_path / 'few'}", buffer_size=6, seed=0).load_state_dict(state)
