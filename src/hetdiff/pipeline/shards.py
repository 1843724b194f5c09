"""``hetdiff export-data``, ``hetdiff features`` and ``hetdiff split`` as library calls.

``features_command`` runs in one process or under ``torchrun --nproc_per_node N``: it reads
``RANK`` / ``WORLD_SIZE`` from the environment, joins a gloo process group (CPU, or beside
GPUs), encodes its own whole shards (``hetdiff.data.shard_features``), waits at a barrier,
and rank 0 writes ``features.json``.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm

from hetdiff.config.shards import ExportSettings, FeatureSettings, SplitSettings
from hetdiff.errors import HetdiffError


def export_data_command(data: str, out: str, settings: ExportSettings | None = None) -> str:
    """Export the data set ``data`` to ``settings.shards`` shards of ``settings.format`` under
    ``out``; print and return the spec that reads them back (``wds:OUT/{00000..}.tar`` or
    ``parquet:OUT``)."""
    from hetdiff.data.export import export_dataset, shard_pattern

    settings = settings or ExportSettings()
    index = export_dataset(data, out, shards=settings.shards, fmt=settings.format)
    pattern = shard_pattern(out, index, settings.format)
    print(f"wrote {index['total']} samples of {data} as {len(index['shards'])} shards: {pattern}")
    return pattern


def _process_group() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started a process group) from torchrun's env."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    dist.init_process_group("gloo")
    return rank, world, True


def features_command(
    data: str, out: str, settings: FeatureSettings | None = None, progress: bool = True
) -> dict[str, Any] | None:
    """Encode every shard of the shard spec ``data`` with ``settings.encoder`` (a registered
    name or ``hf:PATH``) into the folder ``out``; finished shards are skipped. Returns the
    index on rank 0 (None on other ranks)."""
    from hetdiff.data.features import get_encoder
    from hetdiff.data.shard_features import extract_features, write_feature_index
    from hetdiff.data.shards import is_shard_spec

    if not is_shard_spec(data):
        raise HetdiffError(f"--data {data!r} is not a shard spec; use wds:, parquet: or hf:")
    settings = settings or FeatureSettings()
    batch_size = settings.batch_size
    model = get_encoder(settings.encoder)
    rank, world, started = _process_group()
    try:
        bar = tqdm(desc=f"features rank {rank}", unit="img", disable=not progress)
        computed, skipped = extract_features(
            data, model, out, rank=rank, world=world, batch_size=batch_size,
            on_batch=bar.update, decode_workers=settings.decode_workers,
        )  # fmt: skip
        bar.close()
        print(
            f"rank {rank}/{world}: encoded {len(computed)} shard(s), "
            f"skipped {len(skipped)} finished shard(s) with {model.key}"
        )
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        if rank != 0:
            return None
        index = write_feature_index(data, model.key, out)
        print(f"wrote {out}/features.json: {index['total']} samples, {len(index['shards'])} shards")
        return index
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


def split_command(
    data: str, features: str, out: str, k: int, settings: SplitSettings | None = None
) -> dict[str, Any]:
    """Cluster the features of ``data`` into ``k`` and write one shard set per cluster under
    ``out`` (a killed run resumes); print the cluster sizes and the spec each island trains
    from."""
    from hetdiff.data.shard_split import split_shards

    s = settings or SplitSettings()
    record = split_shards(data, features, out, k, fine=s.fine, subsample=s.subsample,
                          seed=s.seed, per_shard=s.per_shard)  # fmt: skip
    print(
        f"split {record['total']} samples of {data} into K={k} via {record['fine']} fine "
        f"clusters (subsample {record['subsample']}, features {record['encoder']})"
    )
    for cluster, count in enumerate(record["counts"]):
        print(f"  cluster {cluster}: {count} samples -> wds:{out.rstrip('/')}/cluster-{cluster}")
    return record
