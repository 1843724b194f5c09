"""``StreamBatches``: the loop's batches from a shard stream carry the expert's targets: class
ids equal to the in-memory labels, or the batch's own shard captions in a per-batch caption
bank; an in-memory text expert on shards embeds the shards' captions too. A rank decodes and
embeds only the rows it keeps of each global batch. Decode workers (a thread pool decoding the
next batch ahead) give bitwise the same batches and positions as inline decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hetdiff.data.datasets import load_dataset
from hetdiff.data.export import ShardSetWriter, png_bytes
from hetdiff.data.shard_dataset import shard_keys
from hetdiff.data.shard_stream import ShardStream
from hetdiff.data.shards import ShardSample
from hetdiff.errors import HetdiffError
from hetdiff.models.text import load_text_encoder
from hetdiff.training.batches import BatchStream
from hetdiff.training.captions import dataset_caption_bank
from hetdiff.training.stream import StreamBatches


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("captioned")
    writer = ShardSetWriter(str(root), 10)
    for i in range(40):
        pixels = np.full((1, 8, 8), 6 * i, dtype=np.uint8)
        meta = {"class": ("cat", "dog", "owl")[i % 3]}
        writer.write(ShardSample(f"k/{i:03d}", png_bytes(pixels), "png", f"caption {i}", meta))
    writer.close()
    return f"wds:{root}"


def _captions(spec: str) -> dict[str, str]:
    from hetdiff.data.shards import iter_shard, parse_shard_spec

    shard_set = parse_shard_spec(spec)
    return {s.key: s.caption for shard in shard_set.shards for s in iter_shard(shard_set, shard)}


def test_caption_batches_carry_the_shards_captions(spec) -> None:
    batches = StreamBatches(ShardStream(spec, buffer_size=8), "caption", load_text_encoder("hash"))
    assert isinstance(batches, BatchStream) and len(batches) == 40
    captions = _captions(spec)
    for _ in range(6):  # 6 x 16 > 40: crosses into the second epoch
        images, ids = batches.next_batch(16)
        assert images.shape == (16, 1, 8, 8) and torch.equal(ids, torch.arange(16))
        assert batches.bank.texts == tuple(captions[key] for key in batches.keys)
        context, mask = load_text_encoder("hash").encode(list(batches.bank.texts))
        assert torch.equal(batches.bank.context, context) and torch.equal(batches.bank.mask, mask)


@pytest.mark.parametrize("targets", ["class", "caption"])
def test_kept_rows_equal_the_whole_batch_rows_and_only_they_are_decoded(spec, targets) -> None:
    encoder = load_text_encoder("hash") if targets == "caption" else None
    whole = StreamBatches(ShardStream(spec, buffer_size=8), targets, encoder)
    kept = StreamBatches(ShardStream(spec, buffer_size=8), targets, encoder)
    decoded: list[str] = []
    decode = kept.stream.decode
    kept.stream.decode = lambda sample: decoded.append(sample.key) or decode(sample)
    keep = [5, 1, 3, 7]
    for _ in range(3):  # 3 x 8 samples: both streams advance by the whole batch
        images, target = whole.next_batch(8)
        some_images, some_target = kept.next_batch(8, keep)
        assert torch.equal(some_images, images[keep])
        assert kept.keys == [whole.keys[row] for row in keep] == decoded[-4:]
        if targets == "class":
            assert torch.equal(some_target, target[keep])
        else:  # the bank holds the kept rows' captions, ids 0..3 into it
            assert torch.equal(some_target, torch.arange(4))
            assert kept.bank.texts == tuple(whole.bank.texts[row] for row in keep)
            assert torch.equal(kept.bank.context, whole.bank.context[keep])
    assert len(decoded) == 12  # 4 of every 8


def test_class_batches_carry_the_in_memory_labels(spec) -> None:
    memory = load_dataset(spec)
    row_of = {key: row for row, key in enumerate(shard_keys(spec))}
    batches = StreamBatches(ShardStream(spec, buffer_size=8), "class")
    images, labels = batches.next_batch(12)
    rows = [row_of[key] for key in batches.keys]
    assert torch.equal(labels, memory.labels[rows]) and torch.equal(images, memory.images[rows])
    assert StreamBatches(ShardStream(spec, buffer_size=8)).next_batch(4)[1] is None
    with pytest.raises(HetdiffError, match="need a text encoder"):
        StreamBatches(ShardStream(spec), "caption")


def test_in_memory_text_expert_embeds_the_shards_captions(spec, tmp_path: Path) -> None:
    dataset = load_dataset(spec)
    bank, ids = dataset_caption_bank(dataset, "hash", cache_dir=tmp_path)
    captions = _captions(spec)
    assert [bank.texts[int(i)] for i in ids] == [captions[key] for key in shard_keys(spec)]


def test_streamed_text_expert_honours_gradient_checkpointing(spec, tmp_path, monkeypatch) -> None:
    """A streamed expert is built like an in-memory one (``expert_net_and_loss``): its blocks
    are checkpointed when asked, and the caption loss embeds each batch's own captions."""
    import hetdiff.training.expert as expert_module
    from hetdiff.config import ExpertSettings
    from hetdiff.experts.store import load_expert_model
    from hetdiff.training.stream import train_streamed_expert

    wrapped = []
    enable = expert_module.enable_gradient_checkpointing
    monkeypatch.setattr(expert_module, "enable_gradient_checkpointing",
                        lambda net: wrapped.append(enable(net)))  # fmt: skip
    settings = ExpertSettings(steps=2, batch_size=8, checkpoint_every=2, progress=False,
                              text_encoder="hash", gradient_checkpointing=True)  # fmt: skip
    path = train_streamed_expert(spec, settings, tmp_path / "expert", shuffle_buffer=16)
    net, spec_record = load_expert_model(path)
    assert wrapped == [4] and spec_record.text_encoder == "hash"
    assert all(torch.isfinite(p).all() for p in net.parameters())


def _batches(spec: str, workers: int, targets: str = "class") -> StreamBatches:
    return StreamBatches(ShardStream(spec, buffer_size=8), targets, None, workers)


@pytest.mark.parametrize("workers", [1, 3])
def test_decode_workers_give_the_inline_batches_and_positions(spec, workers) -> None:
    inline, pooled = _batches(spec, 0), _batches(spec, workers)
    keep = [6, 0, 2]
    for step in range(7):  # 7 x 8 > 40: crosses an epoch; the position follows the batches
        request = (8, keep) if step % 2 else (8, None)
        want, got = inline.next_batch(*request), pooled.next_batch(*request)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
        assert inline.keys == pooled.keys
        assert pooled.state_dict() == inline.state_dict()  # not the batch decoded ahead
    pooled.close()
    pooled.close()  # idempotent


def test_a_pooled_stream_resumes_at_the_saved_batch(spec) -> None:
    straight, first = _batches(spec, 2), _batches(spec, 2)
    expected = [straight.next_batch(8)[0] for _ in range(6)]
    for batch in expected[:3]:
        assert torch.equal(first.next_batch(8)[0], batch)
    saved = json.loads(json.dumps(first.state_dict()))  # as the training state stores it
    resumed = _batches(spec, 2)
    resumed.load_state_dict(saved)
    for batch in expected[3:]:
        assert torch.equal(resumed.next_batch(8)[0], batch)
    for batches in (straight, first, resumed):
        batches.close()


def _write_twelve(root: Path, corrupt: int | None) -> str:
    writer = ShardSetWriter(str(root), 2)
    for i in range(12):
        image = b"not a png" if i == corrupt else png_bytes(np.full((1, 8, 8), i, np.uint8))
        writer.write(ShardSample(f"k/{i:03d}", image, "png", f"c {i}", {"class": "a"}))
    writer.close()
    return f"wds:{root}"


def test_a_corrupt_sample_fails_the_batch_that_holds_it(tmp_path) -> None:
    """Decoded ahead or inline, the error comes with the batch holding the sample, not before."""
    order = ShardStream(_write_twelve(tmp_path / "clean", None), buffer_size=1)
    seventh = int([order.next_sample().key for _ in range(7)][-1][-3:])
    spec = _write_twelve(tmp_path / "bad", seventh)  # the 7th sample drawn: in batch 1 of 4
    for workers in (0, 2):
        batches = StreamBatches(ShardStream(spec, buffer_size=1), "none", None, workers)
        batches.next_batch(4)  # with workers, batch 1 is decoded ahead here: no error yet
        with pytest.raises(HetdiffError, match=rf"key \S*k__{seventh:03d}: corrupt image") as e:
            batches.next_batch(4)
        assert "\n" not in str(e.value)
        batches.close()


def test_decode_workers_must_be_a_count(spec) -> None:
    with pytest.raises(HetdiffError, match="decode workers must be an integer >= 0"):
        _batches(spec, -1)
