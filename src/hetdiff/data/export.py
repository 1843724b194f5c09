"""Write samples as shards: a data set exported to webdataset tars or parquet files, and the
shard writer ``hetdiff split`` uses for each cluster.

Tar shard ``{i:05d}.tar`` holds per sample ``KEY.png`` (8-bit gray or RGB at the source's
native size), ``KEY.txt`` (its caption) and ``KEY.json`` (``{"id", "class", "caption"}``);
parquet file ``{i:05d}.parquet`` holds columns ``key``, ``image`` (a Hugging Face ``Image``
struct ``{bytes, path}``), ``caption``, ``class`` and ``id``. Members are written with a fixed
mtime, so the same samples give byte-identical shards. Beside the shards, ``index.json`` lists
the shard names, their sample counts and sha256 digests, and the total; ``wds:FOLDER`` reads it.

Each shard is built in memory and written whole (atomically for local paths, one put for
fsspec URLs); the index is written last, so a folder with an index is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from hetdiff.data.shards import INDEX_NAME, ShardSample
from hetdiff.errors import HetdiffError
from hetdiff.io import write_url_bytes

EXPORT_FORMATS = ("wds", "parquet")
_MTIME = 0.0


class ShardSetWriter:
    """Append samples; every ``per_shard`` samples become one shard ``{i:05d}.tar`` under
    ``folder`` (a path or fsspec URL). :meth:`close` writes the last shard and ``index.json``
    (``{"shards", "counts", "digests", "keys", "total", "classes"}``; classes: the
    samples' ``class`` metadata in order of first appearance). ``written(url, sha256)``, if
    given, says whether a shard with exactly these bytes is already at ``url`` (a resumed job);
    such a shard is not written again. ``on_written(url, sha256)`` is called after each write.
    Returns the index from :meth:`close`."""

    def __init__(
        self,
        folder: str,
        per_shard: int,
        fmt: str = "wds",
        written: Callable[[str, str], bool] | None = None,
        on_written: Callable[[str, str], None] | None = None,
    ) -> None:
        if per_shard < 1:
            raise HetdiffError(f"samples per shard must be >= 1, got {per_shard}")
        if fmt not in EXPORT_FORMATS:
            raise HetdiffError(f"shard format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
        self.folder, self.per_shard, self.fmt = folder.rstrip("/"), per_shard, fmt
        self.index: dict[str, Any] = {"shards": [], "counts": [], "digests": [], "keys": []}
        self._pending: list[ShardSample] = []
        self._classes: dict[str, None] = {}  # class names in order of first appearance
        self._written, self._on_written = written, on_written

    def write(self, sample: ShardSample) -> None:
        """Queue one sample; a full shard is written at once."""
        self._pending.append(sample)
        self._classes.setdefault(str(sample.meta.get("class", "image")), None)
        if len(self._pending) >= self.per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"{len(self.index['shards']):05d}.{'tar' if self.fmt == 'wds' else 'parquet'}"
        data = _tar_bytes(self._pending) if self.fmt == "wds" else _parquet_bytes(self._pending)
        url, digest = posixpath.join(self.folder, name), hashlib.sha256(data).hexdigest()
        if self._written is None or not self._written(url, digest):
            write_url_bytes(url, data)
            if self._on_written is not None:
                self._on_written(url, digest)
        self.index["shards"].append(name)
        self.index["counts"].append(len(self._pending))
        self.index["digests"].append(digest)
        self.index["keys"].extend(sample.key for sample in self._pending)
        self._pending = []

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the last shard and the index (with ``extra`` fields); return the index."""
        self._flush()
        self.index["total"] = sum(self.index["counts"])
        self.index["classes"] = list(self._classes)
        self.index.update(extra or {})
        text = json.dumps(self.index, indent=1, sort_keys=True) + "\n"
        write_url_bytes(posixpath.join(self.folder, INDEX_NAME), text.encode())
        return self.index


def _member_key(key: str) -> str:
    """A tar member stem: keys ``shard/member`` become ``shard__member`` (no dots, no slash)."""
    return key.replace("/", "__").replace(".", "_")


def _tar_bytes(samples: list[ShardSample]) -> bytes:
    from webdataset import TarWriter

    buffer = io.BytesIO()
    with TarWriter(buffer, encoder=False, mtime=_MTIME) as writer:
        for sample in samples:
            meta = {**sample.meta, "caption": sample.caption, "source_key": sample.key}
            writer.write(
                {
                    "__key__": _member_key(sample.key),
                    sample.image_ext: sample.image,
                    "txt": sample.caption.encode("utf-8"),
                    "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
                }
            )
    return buffer.getvalue()


def _parquet_bytes(samples: list[ShardSample]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "key": [_member_key(s.key) for s in samples],
            "image": [{"bytes": s.image, "path": None} for s in samples],
            "caption": [s.caption for s in samples],
            "class": [str(s.meta.get("class", "image")) for s in samples],
            "id": [int(s.meta.get("id", -1)) for s in samples],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    """``(C, S, S)`` uint8 with C in {1, 3} -> PNG bytes (mode L or RGB), deterministic."""
    array = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def export_dataset(spec: str, out: str, shards: int, fmt: str) -> dict[str, Any]:
    """Write the data set ``spec`` (``hetdiff.data.datasets``) as ``shards`` shards of about
    equal size under ``out`` in ``fmt`` (``wds`` or ``parquet``), in data set order; the
    key of sample id ``i`` is ``"data/{i:010d}"``, its caption ``dataset_captions``' choice.
    Returns the index (``index.json``). Pixels are stored at native size: ``p = round((x +
    1) / 2 * 255)`` of the [-1, 1] tensor, exact for 8-bit sources."""
    from hetdiff.data.captions import dataset_captions
    from hetdiff.data.datasets import load_dataset

    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise HetdiffError(f"--shards must be a positive integer, got {shards!r}")
    dataset = load_dataset(spec)
    if shards > len(dataset):
        raise HetdiffError(f"{shards} shards for {len(dataset)} samples; use --shards <= that")
    captions = dataset_captions(dataset)
    pixels = ((dataset.images + 1.0) * 127.5).round().clamp(0, 255).numpy().astype(np.uint8)
    per_shard = -(-len(dataset) // shards)
    writer = ShardSetWriter(out, per_shard, fmt)
    for row in range(len(dataset)):
        sample_id = int(dataset.ids[row])
        writer.write(
            ShardSample(
                key=f"data/{sample_id:010d}",
                image=png_bytes(pixels[row]),
                image_ext="png",
                caption=captions.caption(row),
                meta={"id": sample_id, "class": dataset.class_names[int(dataset.labels[row])]},
            )
        )
    return writer.close({"data_spec": dataset.spec, "data_fingerprint": dataset.fingerprint})


def shard_pattern(folder: str, index: dict[str, Any], fmt: str = "wds") -> str:
    """The spec that reads an exported folder: ``wds:FOLDER/{00000..00007}.tar`` or
    ``parquet:FOLDER``."""
    if fmt == "parquet":
        return f"parquet:{folder}"
    last = len(index["shards"]) - 1
    return f"wds:{folder.rstrip('/')}/{{00000..{last:05d}}}.tar"
