"""Sharded image-caption sources: webdataset tars, parquet files and Hugging Face folders.

A shard spec names the shards of one source::

    wds:shards/{00000..00007}.tar     brace pattern of tar shards (local paths or fsspec URLs;
                                      several patterns joined with ``::``)
    wds:cluster-2                     a folder holding ``index.json`` (written by export or split)
    parquet:PATH                      one ``.parquet`` file, or a folder of them (sorted)
    hf:PATH                           a ``datasets`` folder written by ``save_to_disk``

A tar shard holds samples as members sharing a key (webdataset's convention): one image
(``.png``, ``.jpg``, ``.jpeg`` or ``.webp``) and its caption (``.txt``, or the ``"caption"`` of a
``.json`` member, which may also carry ``"class"``). Parquet and ``datasets`` rows hold an image
column (bytes, or a Hugging Face ``Image`` struct ``{bytes, path}``) and a caption column.

Every sample has a stable key ``"<shard name>/<member key>"`` (shard name: the file name
without its extension; parquet and ``datasets`` rows use ``row-<index>``), the same on every
read, so a partition names samples without indices into one machine's data.

Reading is streaming, one sample at a time; tar members are read through webdataset's
``tar_file_iterator`` and ``group_by_keys``. Each shard's bytes are hashed (sha256) as they
stream by, so callers can record and check shard digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from hetdiff.errors import HetdiffError
from hetdiff.io import read_url_bytes

SHARD_KINDS = ("wds", "parquet", "hf")
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
CAPTION_COLUMNS = ("caption", "text", "txt")
INDEX_NAME = "index.json"
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass(frozen=True)
class ShardSet:
    """The shards of one source. kind: ``wds``, ``parquet`` or ``hf``; shards: URLs or paths
    in read order, each named once; spec: the text it came from (``wds:...``)."""

    kind: str
    shards: tuple[str, ...]
    spec: str


@dataclass(frozen=True, eq=False)
class ShardSample:
    """One sample: key ``"<shard>/<member>"``, encoded image bytes and their extension,
    caption text, and the metadata of its ``.json`` member (or row columns), if any."""

    key: str
    image: bytes
    image_ext: str
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)


def is_shard_spec(part: str) -> bool:
    """True for ``wds:...``, ``parquet:...`` and ``hf:...`` data set parts."""
    return any(part.startswith(f"{kind}:") for kind in SHARD_KINDS)


def shard_name(url: str) -> str:
    """The shard's file name without extension: ``s3://b/x/00003.tar`` -> ``00003``."""
    base = posixpath.basename(str(url).rstrip("/"))
    return base.split(".", 1)[0] if "." in base else base


def parse_shard_spec(spec: str) -> ShardSet:
    """Expand a shard spec (module docstring) into its shards; one-line errors for an unknown
    kind, a pattern that names no shard, or a shard (or shard name) listed twice."""
    kind, _, rest = spec.partition(":")
    if kind not in SHARD_KINDS or not rest:
        raise HetdiffError(f"shard spec {spec!r} must be wds:PATTERN, parquet:PATH or hf:PATH")
    if kind == "wds":
        shards = _expand_wds(rest)
    elif kind == "parquet":
        shards = _list_files(rest, ".parquet")
    else:
        shards = _list_files(rest, ".arrow", state_file="state.json")
    if not shards:
        raise HetdiffError(f"shard spec {spec!r} names no shards; check the path or pattern")
    seen: dict[str, str] = {}
    for shard in shards:
        name = shard_name(shard)
        if name in seen:
            what = (
                "is listed twice" if seen[name] == shard else f"has the same name as {seen[name]}"
            )
            raise HetdiffError(
                f"shard {shard} {what} in {spec!r}; list each shard once (keys are per name)"
            )
        seen[name] = shard
    return ShardSet(kind=kind, shards=tuple(shards), spec=spec)


def _expand_wds(pattern: str) -> list[str]:
    from webdataset.shardlists import expand_urls

    if not any(ch in pattern for ch in "{:") and not pattern.endswith((".tar", ".tgz")):
        return [posixpath.join(pattern.rstrip("/"), name) for name in read_index(pattern)["shards"]]
    return list(expand_urls(pattern))


def _list_files(path: str, suffix: str, state_file: str | None = None) -> list[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    if fs.isfile(root):
        return [path]
    if not fs.isdir(root):
        raise HetdiffError(f"{path} is neither a {suffix} file nor a folder of them")
    if state_file is not None and fs.isfile(posixpath.join(root, state_file)):
        state = json.loads(fs.cat_file(posixpath.join(root, state_file)))
        names = [entry["filename"] for entry in state.get("_data_files", [])]
        return [posixpath.join(path.rstrip("/"), name) for name in names]
    names = sorted(posixpath.basename(p) for p in fs.ls(root, detail=False) if p.endswith(suffix))
    return [posixpath.join(path.rstrip("/"), name) for name in names]


def read_index(folder: str) -> dict[str, Any]:
    """The ``index.json`` of a shard folder: ``{"shards": [names], "counts": [...], ...}``."""
    text = read_url_bytes(
        posixpath.join(folder.rstrip("/"), INDEX_NAME),
        "shard index",
        "pass a brace pattern such as wds:DIR/{00000..00007}.tar, or a folder written by "
        "`hetdiff export-data` or `hetdiff split`",
    )
    index = json.loads(text)
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise HetdiffError(f"{folder}/{INDEX_NAME} has no shard list; rewrite the folder")
    return index


# --------------------------------------------------------------------------------- reading


class _CheckedReader(io.RawIOBase):
    """A read-only stream that counts its bytes, keeps the last 1024, and feeds every byte it
    returns into ``digest`` (if any)."""

    def __init__(self, handle: Any, digest: Any) -> None:
        self.handle, self.digest = handle, digest
        self.total, self.tail = 0, b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if self.digest is not None:
            self.digest.update(data)
        self.total += len(data)
        self.tail = (self.tail + data)[-1024:]
        return data

    def complete_tar(self) -> bool:
        """Whether the stream, read to its end, ends as a tar does: whole 512-byte blocks and
        the two zero blocks of the end-of-archive marker."""
        while self.read(1 << 20):
            pass
        return self.total % 512 == 0 and self.tail == bytes(1024)


def iter_shard(shard_set: ShardSet, shard: str, digest: Any = None) -> Iterator[ShardSample]:
    """Stream the samples of one shard of ``shard_set`` in stored order.

    ``digest`` (a ``hashlib`` object) receives the shard's bytes as they are read (tar shards;
    parquet and ``datasets`` files are hashed whole). One-line errors name the shard and key: a
    missing or truncated shard, a member without an image or a caption.
    """
    if shard_set.kind == "wds":
        yield from _iter_tar(shard, digest)
    else:
        yield from _iter_table(shard_set.kind, shard, digest)


def _iter_tar(shard: str, digest: Any) -> Iterator[ShardSample]:
    import tarfile

    import fsspec
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    name = shard_name(shard)
    try:
        handle = fsspec.open(shard, "rb").open()
    except (FileNotFoundError, OSError) as err:
        raise HetdiffError(
            f"shard {shard} cannot be opened ({err}); was it moved or deleted?"
        ) from None
    stream = _CheckedReader(handle, digest)
    last, pending = "(start)", None
    truncated = (
        f"shard {shard} is truncated or not a tar file after key {name}/{{}}; "
        "re-create or re-download it"
    )
    try:
        members = ({**m, "__url__": shard} for m in tar_file_iterator(stream))
        for sample in group_by_keys(members):  # one sample behind: the last may be cut short
            if pending is not None:
                yield _tar_sample(shard, name, pending)
                last = str(pending["__key__"])
            pending = sample
        if not stream.complete_tar():
            raise HetdiffError(truncated.format(last))
        if pending is not None:
            yield _tar_sample(shard, name, pending)
    except HetdiffError:
        raise
    except (EOFError, OSError, ValueError) as err:
        if isinstance(err, tarfile.TarError | EOFError) or "tar" in str(err).lower():
            raise HetdiffError(truncated.format(last)) from None
        raise
    finally:
        handle.close()


def _tar_sample(shard: str, name: str, sample: dict[str, Any]) -> ShardSample:
    key = f"{name}/{sample['__key__']}"
    exts = [ext for ext in IMAGE_EXTS if ext in sample]
    if not exts:
        raise HetdiffError(
            f"shard {shard} key {key} has no image member ({'/'.join(IMAGE_EXTS)}); "
            "add one or remove the sample"
        )
    meta: dict[str, Any] = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            raise HetdiffError(f"shard {shard} key {key}: its .json member is not JSON") from None
    caption = sample["txt"].decode("utf-8").strip() if "txt" in sample else meta.get("caption")
    if not isinstance(caption, str) or not caption:
        raise HetdiffError(
            f'shard {shard} key {key} has no caption (.txt member or .json "caption"); '
            "add one or remove the sample"
        )
    return ShardSample(key, sample[exts[0]], exts[0], caption, meta)


def _iter_table(kind: str, shard: str, digest: Any) -> Iterator[ShardSample]:
    raw = read_url_bytes(shard, "shard", "was it moved or deleted?")
    if digest is not None:
        digest.update(raw)
    if kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(raw))
    else:
        import pyarrow as pa

        table = pa.ipc.open_stream(raw).read_all()
    columns = table.column_names
    image_column = "image" if "image" in columns else None
    caption_column = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if image_column is None or caption_column is None:
        raise HetdiffError(
            f"shard {shard} needs an 'image' column and a caption column "
            f"({', '.join(CAPTION_COLUMNS)}); it has {columns}"
        )
    name = shard_name(shard)
    extra = [c for c in columns if c not in (image_column, caption_column)]
    for row, record in enumerate(table.to_pylist()):
        key = f"{name}/{record['key']}" if "key" in record else f"{name}/row-{row:08d}"
        image = record[image_column]
        data = image.get("bytes") if isinstance(image, dict) else image
        if not isinstance(data, bytes | bytearray) or not data:
            raise HetdiffError(f"shard {shard} key {key} has no image bytes; fix the row")
        caption = record[caption_column]
        if not isinstance(caption, str) or not caption.strip():
            raise HetdiffError(f"shard {shard} key {key} has no caption; fix the row")
        meta = {c: record[c] for c in extra}
        yield ShardSample(key, bytes(data), _sniff_ext(data), caption.strip(), meta)


def _sniff_ext(data: bytes) -> str:
    return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


# --------------------------------------------------------------------------------- decoding


def decode_square(sample: ShardSample, shard: str, rgb: bool = False) -> np.ndarray:
    """The sample's image as an ``(S, S, C)`` uint8 center square (S = shorter side); C = 1
    for gray-ish images unless ``rgb``, else 3. A corrupt image is a one-line error naming the
    shard and key."""
    try:
        with Image.open(io.BytesIO(sample.image)) as image:
            image.load()
            gray = image.mode in GRAY_MODES and not rgb
            converted = image.convert("L" if gray else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HetdiffError(
            f"shard {shard} key {sample.key}: corrupt image ({reason}); fix or remove the sample"
        ) from None
    side = min(converted.size)
    left, top = (converted.width - side) // 2, (converted.height - side) // 2
    array = np.asarray(converted.crop((left, top, left + side, top + side)), dtype=np.uint8)
    return array[:, :, None] if gray else array


def resize_square(array: np.ndarray, side: int) -> np.ndarray:
    """``(S, S, C)`` uint8 -> ``(side, side, C)`` with Pillow's antialiased bilinear filter."""
    if array.shape[0] == side:
        return array
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    out = np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out[:, :, None] if out.ndim == 2 else out


def shard_digest(shard_set: ShardSet, shard: str) -> str:
    """sha256 hex of a shard's bytes (reads the whole shard)."""
    digest = hashlib.sha256()
    for _ in iter_shard(shard_set, shard, digest):
        pass
    return digest.hexdigest()
