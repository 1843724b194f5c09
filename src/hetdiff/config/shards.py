"""Settings of the sharded data path, every default once: ``hetdiff export-data``, ``hetdiff
features``, ``hetdiff split`` and streamed expert training (``train-expert --stream``).
The commands read their flag defaults from these types."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hetdiff.config.fields import at_least, check_fields, one_of
from hetdiff.data.export import EXPORT_FORMATS
from hetdiff.data.features import DEFAULT_ENCODER


@dataclass(frozen=True)
class ExportSettings:
    """How ``hetdiff export-data`` writes a data set as shards."""

    shards: int = 8  # number of shards, of about equal size
    format: str = "wds"  # wds (webdataset tars) | parquet

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 1, "shards")
        one_of(self, "format", EXPORT_FORMATS)


@dataclass(frozen=True)
class FeatureSettings:
    """How ``hetdiff features`` encodes every shard."""

    encoder: str = DEFAULT_ENCODER  # a registered encoder (efficientnet-lite0@<px>) or hf:PATH
    batch_size: int = 64  # images per encoder call
    decode_workers: int = 2  # threads decoding ahead of the encoder; 0 = inline

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 1, "batch_size")
        at_least(self, 0, "decode_workers")


@dataclass(frozen=True)
class SplitSettings:
    """How ``hetdiff split`` clusters the features and writes one shard set per cluster."""

    fine: int | None = None  # fine k-means centroids; None = min(1024, max(K, subsample / 20))
    subsample: int = 200_000  # feature rows the k-means is fitted on (drawn uniformly, seeded)
    seed: int = 0  # seeds the subsample and the k-means
    per_shard: int = 1000  # samples per output shard of each cluster

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 1, "subsample", "per_shard")
        at_least(self, 0, "seed")
        if self.fine is not None:
            at_least(self, 1, "fine")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StreamSettings:
    """How an expert reads its shards as a stream (``train-expert --stream``)."""

    shuffle_buffer: int = 1000  # samples held (encoded) in the shuffle buffer
    decode_workers: int = 2  # threads decoding each batch and the next one ahead; 0 = inline

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 1, "shuffle_buffer")
        at_least(self, 0, "decode_workers")
