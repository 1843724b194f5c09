"""A shard set read as an endless, seeded, resumable stream of decoded samples.

Order. Epoch e reads the shards in a permutation drawn from ``derive(seed, "shards", e)``;
each shard's samples, in stored order, pass through a shuffle buffer of ``buffer_size``
samples: the first ``buffer_size`` fill it; after that every incoming sample replaces the one
at ``j = rng.integers(buffer_size)``, which is emitted. When the epoch's last shard ends the
buffer drains: ``j = rng.integers(len(buffer))`` is emitted and the last entry moves into slot
j. Epoch e + 1 starts only then, so every key is emitted exactly once per epoch. ``rng`` is one
numpy PCG64 generator seeded by ``derive(seed, "buffer")``, never reseeded.

Memory holds the buffer's encoded samples (bytes, not pixels) and one open shard, whatever N.

Resume. ``state_dict()`` is JSON: the epoch, the index of the current shard in the epoch's
order, how many of its samples were read (``offset``), the buffer's contents as keys (in slot
order) and the generator's state. ``load_state_dict`` re-reads the shards those keys name to
refill the buffer and reopens the current shard after ``offset`` samples, so the stream goes on
with exactly the samples it would have given.

Decoding. A sample becomes ``(C, S, S)`` float32 in [-1, 1] as ``load_dataset`` makes it:
center square (``decode_square``), ``x = 2 p / 255 - 1``, ITU-R 601 luma or channel
replication to C, antialiased bilinear resize to S (``hetdiff.data.datasets``). C is 1 when
the first sample is gray-ish, else 3, unless given; S is the first sample's side unless given.
Class ids follow the class names in order of first appearance in shard order (the ``classes``
of a folder's ``index.json``, or one metadata pass over the shards), as in-memory reading does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hetdiff.data.datasets import _to_float_images
from hetdiff.data.shards import (
    ShardSample,
    decode_square,
    iter_shard,
    parse_shard_spec,
    read_index,
    shard_name,
)
from hetdiff.data.sources import RawSource
from hetdiff.errors import HetdiffError

STATE_FORMAT = "hetdiff-stream/1"


def _derive(*parts: object) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True, eq=False)
class StreamItem:
    """One decoded sample: key, image (C, S, S) float32 in [-1, 1], caption, class id."""

    key: str
    image: Tensor
    caption: str
    label: int


@dataclass(frozen=True)
class StreamInfo:
    """What one metadata pass (or a folder's ``index.json``) says about a shard set."""

    total: int
    class_names: tuple[str, ...]
    shard_ids: tuple[str, ...]  # per shard: its sha256 from the index, else its size in bytes


def scan_shards(spec: str) -> StreamInfo:
    """Sample count, class names (order of first appearance) and shard identities of ``spec``:
    from ``index.json`` when it lists ``classes`` (written by export and split), else by one
    pass over the shards that decodes no image."""
    shard_set = parse_shard_spec(spec)
    rest = spec.partition(":")[2]
    index = None
    if shard_set.kind == "wds" and not any(ch in rest for ch in "{:"):
        index = None if rest.endswith((".tar", ".tgz")) else read_index(rest)
    if index is not None and isinstance(index.get("classes"), list) and "digests" in index:
        return StreamInfo(int(index["total"]), tuple(index["classes"]), tuple(index["digests"]))
    import fsspec

    total, classes = 0, {}
    for shard in shard_set.shards:
        for sample in iter_shard(shard_set, shard):
            classes.setdefault(str(sample.meta.get("class", "image")), len(classes))
            total += 1
    sizes = tuple(str(fsspec.core.url_to_fs(s)[0].size(s)) for s in shard_set.shards)
    return StreamInfo(total, tuple(classes), sizes)


class ShardStream:
    """The samples of shard spec ``spec``, shuffled and decoded (module docstring).

    resolution: output side S (None: the first sample's side); channels: 1 or 3 (None: from the
    first sample); buffer_size: shuffle buffer samples (>= 1); seed: seeds shard order and
    buffer. ``info`` (``scan_shards``) is read when not given.
    """

    def __init__(
        self,
        spec: str,
        resolution: int | None = None,
        channels: int | None = None,
        buffer_size: int = 1000,
        seed: int = 0,
        info: StreamInfo | None = None,
    ) -> None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise HetdiffError(f"shuffle buffer size must be a positive integer, got {buffer_size}")
        self.spec, self.buffer_size, self.seed = spec, buffer_size, seed
        self.shard_set = parse_shard_spec(spec)
        self.info = info or scan_shards(spec)
        if self.info.total == 0:
            raise HetdiffError(f"{spec} holds no samples; check the shards")
        self._class_ids = {name: i for i, name in enumerate(self.info.class_names)}
        self._by_name = {shard_name(s): s for s in self.shard_set.shards}
        self._rng = np.random.Generator(np.random.PCG64(_derive(seed, "buffer")))
        self._epoch, self._shard, self._offset = 0, 0, 0
        self._buffer: list[ShardSample] = []
        self._reader: Iterator[ShardSample] | None = None
        self._order = self._epoch_order(0)
        first = next(iter_shard(self.shard_set, self.shard_set.shards[0]))
        square = decode_square(first, self.shard_set.shards[0])
        self.resolution = resolution or int(square.shape[0])
        self.channels = channels or int(square.shape[2])

    # ---------------------------------------------------------------------- ImageDataset-like
    @property
    def class_names(self) -> tuple[str, ...]:
        """``"<spec>/<class>"`` per class, as ``load_dataset(spec)`` names them."""
        return tuple(f"{self.spec}/{name}" for name in self.info.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.info.class_names)

    @property
    def fingerprint(self) -> str:
        """sha256 (first 16 hex) of what fixes the stream: shard names and identities, S, C,
        buffer size and seed."""
        fields = [self.spec, [shard_name(s) for s in self.shard_set.shards],
                  list(self.info.shard_ids), self.resolution, self.channels, self.buffer_size,
                  self.seed]  # fmt: skip
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return self.info.total

    # ---------------------------------------------------------------------- reading
    def _epoch_order(self, epoch: int) -> list[str]:
        generator = torch.Generator().manual_seed(_derive(self.seed, "shards", epoch))
        permutation = torch.randperm(len(self.shard_set.shards), generator=generator)
        return [self.shard_set.shards[int(i)] for i in permutation]

    def _pull(self) -> ShardSample | None:
        """The next sample of the current shard, or None after moving to the next shard."""
        shard = self._order[self._shard]
        if self._reader is None:
            self._reader = iter_shard(self.shard_set, shard)
            for _ in range(self._offset):
                if next(self._reader, None) is None:
                    raise HetdiffError(
                        f"shard {shard} has fewer than {self._offset} samples now; it changed "
                        "since the stream's state was saved"
                    )
        sample = next(self._reader, None)
        if sample is None:
            self._reader, self._shard, self._offset = None, self._shard + 1, 0
            return None
        self._offset += 1
        return sample

    def next_sample(self) -> ShardSample:
        """The next encoded sample of the stream (endless: epochs follow each other)."""
        while True:
            if self._shard < len(self._order):
                sample = self._pull()
                if sample is None:
                    continue
                if len(self._buffer) < self.buffer_size:
                    self._buffer.append(sample)
                    continue
                slot = int(self._rng.integers(self.buffer_size))
                out, self._buffer[slot] = self._buffer[slot], sample
                return out
            if self._buffer:
                slot = int(self._rng.integers(len(self._buffer)))
                out = self._buffer[slot]
                self._buffer[slot] = self._buffer[-1]
                self._buffer.pop()
                return out
            self._epoch, self._shard, self._offset = self._epoch + 1, 0, 0
            self._order = self._epoch_order(self._epoch)

    def decode(self, sample: ShardSample) -> StreamItem:
        """``sample`` as a :class:`StreamItem` (module docstring); corrupt images and unknown
        classes are one-line errors naming the key."""
        shard = sample.key.rpartition("/")[0]
        square = decode_square(sample, self._by_name.get(shard, shard))
        class_name = str(sample.meta.get("class", "image"))
        if class_name not in self._class_ids:
            raise HetdiffError(
                f"{self.spec} key {sample.key} has class {class_name!r}, which its index does "
                "not list; rewrite the index (hetdiff export-data / split)"
            )
        raw = RawSource(
            name=self.spec,
            pixels=square.transpose(2, 0, 1)[None].copy(),
            levels=255,
            labels=np.zeros(1, dtype=np.int64),
            class_names=(class_name,),
            local_ids=np.zeros(1, dtype=np.int64),
        )
        image = _to_float_images(raw, self.resolution, self.channels)[0]
        return StreamItem(sample.key, image, sample.caption, self._class_ids[class_name])

    # ---------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """The stream's position as JSON-ready values (module docstring)."""
        bit_state = self._rng.bit_generator.state
        return {
            "format": STATE_FORMAT,
            "epoch": self._epoch,
            "shard": self._shard,
            "offset": self._offset,
            "buffer": [sample.key for sample in self._buffer],
            "rng": {
                "state": str(bit_state["state"]["state"]),
                "inc": str(bit_state["state"]["inc"]),
                "has_uint32": int(bit_state["has_uint32"]),
                "uinteger": int(bit_state["uinteger"]),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (``state_dict()`` of a stream over the same shards)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise HetdiffError("the saved stream position is missing or of another format")
        self._epoch, self._shard, self._offset = state["epoch"], state["shard"], state["offset"]
        self._order = self._epoch_order(self._epoch)
        rng = state["rng"]
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(rng["state"]), "inc": int(rng["inc"])},
            "has_uint32": rng["has_uint32"],
            "uinteger": rng["uinteger"],
        }
        self._buffer = self._fetch(list(state["buffer"]))
        self._reader = None

    def _fetch(self, keys: list[str]) -> list[ShardSample]:
        """The samples named by ``keys``, in that order, read from the shards they name."""
        wanted: dict[str, set[str]] = {}
        for key in keys:
            wanted.setdefault(key.rpartition("/")[0], set()).add(key)
        found: dict[str, ShardSample] = {}
        for name, names in wanted.items():
            if name not in self._by_name:
                raise HetdiffError(f"the saved stream names shard {name}, which {self.spec} lacks")
            for sample in iter_shard(self.shard_set, self._by_name[name]):
                if sample.key in names:
                    found[sample.key] = sample
        missing = [key for key in keys if key not in found]
        if missing:
            raise HetdiffError(
                f"key {missing[0]} of the saved stream is no longer in {self.spec}; the shards "
                "changed since the checkpoint: resume with the same data or start over"
            )
        return [found[key] for key in keys]
