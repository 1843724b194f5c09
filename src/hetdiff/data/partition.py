"""Partition manifests: which expert shard (cluster) every sample belongs to.

A :class:`Partition` records the data set's fingerprint, the feature encoder, the fine and
coarse centroids of the two-stage k-means (:mod:`hetdiff.data.clustering`), each sample id's
cluster, the cluster sizes, the seed and the library version. Expert training
(``--partition FILE --cluster K``), router training and evaluation all read it.

On disk it is one JSON file. Small partitions (at most :data:`INLINE_MAX_ELEMENTS` array
elements in all) keep their arrays inline; larger ones put them in an ``.npz`` sidecar beside
the JSON (``partition.json`` -> ``partition.arrays.npz``, read without pickle), named and
SHA-256-checked by the JSON. Local paths are written atomically; fsspec URLs (``s3://``,
``gs://``, ``file://``, ...) work for reading and writing.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import faiss
import numpy as np
from torch import Tensor

from hetdiff import __version__
from hetdiff.data.clustering import (
    assign,
    check_cluster_counts,
    default_fine_count,
    two_stage_kmeans,
)
from hetdiff.data.features import (
    DEFAULT_ENCODER,
    compute_features,
    get_encoder,
)
from hetdiff.errors import HetdiffError
from hetdiff.io import default_cache_dir, read_url_bytes, sibling_url, write_url_bytes

FORMAT = "hetdiff-partition/1"
INLINE_MAX_ELEMENTS = 100_000
_ARRAY_FIELDS = ("fine_centroids", "coarse_centroids", "fine_to_coarse", "ids", "clusters")
_ARRAY_DTYPES = {
    "fine_centroids": np.float32,
    "coarse_centroids": np.float32,
    "fine_to_coarse": np.int64,
    "ids": np.int64,
    "clusters": np.int64,
}
_CREATE_HINT = "create it with `hetdiff cluster --out {}`"
_SCALAR_FIELDS = ("data_spec", "data_fingerprint", "encoder", "k", "fine", "seed", "balanced")


def library_version() -> str:
    """The versions that shape a partition: ``"hetdiff X; faiss Y"``."""
    return f"hetdiff {__version__}; faiss {faiss.__version__}"


@dataclass(frozen=True, eq=False)
class Partition:
    """A K-way split of a data set into expert shards.

    fine_centroids ``(fine, D)`` float32, coarse_centroids ``(k, D)`` float32,
    fine_to_coarse ``(fine,)`` int64 in ``[0, k)``, ids ``(N,)`` int64 sample ids,
    clusters ``(N,)`` int64 in ``[0, k)`` aligned with ``ids``, sizes ``(k,)`` = bincount of
    clusters. ``encoder_state`` holds fitted encoder arrays (e.g. a pixel PCA basis) so new
    images can be encoded the same way. A random partition has ``encoder == "random"`` and
    zero-width centroids.
    """

    data_spec: str
    data_fingerprint: str
    encoder: str
    k: int
    fine: int
    seed: int
    balanced: bool
    fine_centroids: np.ndarray
    coarse_centroids: np.ndarray
    fine_to_coarse: np.ndarray
    ids: np.ndarray
    clusters: np.ndarray
    sizes: tuple[int, ...]
    version: str = field(default_factory=library_version)
    encoder_state: dict[str, np.ndarray] = field(default_factory=dict)

    # -- queries -----------------------------------------------------------------------------

    @cached_property
    def fingerprint(self) -> str:
        """Content hash (16 hex chars) of everything in the manifest; routers record it."""
        digest = hashlib.sha256()
        header = {name: getattr(self, name) for name in _SCALAR_FIELDS}
        header.update(sizes=list(self.sizes), version=self.version)
        digest.update(json.dumps(header, sort_keys=True).encode())
        arrays = {name: getattr(self, name) for name in _ARRAY_FIELDS}
        arrays.update({f"encoder_state/{k}": v for k, v in self.encoder_state.items()})
        for name in sorted(arrays):
            array = np.ascontiguousarray(arrays[name])
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:16]

    def ids_of(self, cluster: int) -> np.ndarray:
        """Sample ids of ``cluster`` ``(n_k,)`` int64, in manifest order."""
        if not 0 <= int(cluster) < self.k:
            raise HetdiffError(
                f"cluster {cluster} not in partition with K={self.k}; use 0..{self.k - 1}"
            )
        members = self.ids[self.clusters == int(cluster)]
        if len(members) == 0:
            raise HetdiffError(f"cluster {cluster} of this K={self.k} partition is empty")
        return members

    @cached_property
    def _id_order(self) -> np.ndarray:
        return np.argsort(self.ids, kind="stable")

    def cluster_of(self, ids: np.ndarray | Tensor | list[int]) -> np.ndarray:
        """Cluster of each sample id ``(M,)`` -> ``(M,)`` int64; unknown ids are an error."""
        query = np.asarray(ids.numpy() if isinstance(ids, Tensor) else ids, dtype=np.int64)
        sorted_ids = self.ids[self._id_order]
        pos = np.searchsorted(sorted_ids, query).clip(max=max(len(sorted_ids) - 1, 0))
        found = sorted_ids[pos] == query if len(sorted_ids) else np.zeros(query.shape, bool)
        if not found.all():
            missing = query[~found].ravel()
            raise HetdiffError(
                f"sample id {int(missing[0])} is not in this partition ({missing.size} unknown "
                f"ids); was it built on data set {self.data_spec!r}?"
            )
        return self.clusters[self._id_order[pos]]

    def check_dataset(self, dataset: Any) -> None:
        """Refuse a data set whose fingerprint differs from the one the partition was built on."""
        if dataset.fingerprint != self.data_fingerprint:
            raise HetdiffError(
                f"partition was built on data {self.data_spec!r} with fingerprint "
                f"{self.data_fingerprint}, but the data set {dataset.spec!r} has fingerprint "
                f"{dataset.fingerprint}; re-run `hetdiff cluster` on this data"
            )

    def assign_features(self, features: np.ndarray) -> np.ndarray:
        """Cluster of new feature rows ``(M, D)`` (same encoder) -> ``(M,)`` int64."""
        if self.encoder == "random":
            raise HetdiffError("a random partition cannot assign new images; it has no centroids")
        return assign(features, self.fine_centroids, self.fine_to_coarse)

    # -- serialization -------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: np.ascontiguousarray(getattr(self, name)) for name in _ARRAY_FIELDS}
        arrays.update({f"encoder_state/{k}": np.asarray(v) for k, v in self.encoder_state.items()})
        return arrays

    def save(self, path_or_url: str) -> None:
        """Write the manifest (and its ``.npz`` sidecar when large) to a path or fsspec URL."""
        path_or_url = str(path_or_url)
        arrays = self._arrays()
        manifest: dict[str, Any] = {"format": FORMAT}
        manifest.update({name: getattr(self, name) for name in _SCALAR_FIELDS})
        manifest.update(sizes=list(self.sizes), version=self.version, fingerprint=self.fingerprint)
        if sum(a.size for a in arrays.values()) <= INLINE_MAX_ELEMENTS:
            manifest["arrays"] = {
                name: {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.ravel().tolist()}
                for name, a in arrays.items()
            }
        else:
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            data = buffer.getvalue()
            sidecar = sidecar_name(path_or_url)
            write_url_bytes(sibling_url(path_or_url, sidecar), data)
            manifest["arrays_file"] = sidecar
            manifest["arrays_sha256"] = hashlib.sha256(data).hexdigest()
        write_url_bytes(path_or_url, _manifest_text(manifest).encode())

    @classmethod
    def load(cls, path_or_url: str) -> Partition:
        """Read a manifest written by :meth:`save`; one-line error if missing or corrupt."""
        path_or_url = str(path_or_url)
        raw = read_url_bytes(path_or_url, "partition file", _CREATE_HINT.format(path_or_url))
        try:
            manifest = json.loads(raw)
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            if "arrays" in manifest:
                arrays = {
                    name: np.asarray(spec["data"], dtype=np.dtype(spec["dtype"])).reshape(
                        spec["shape"]
                    )
                    for name, spec in manifest["arrays"].items()
                }
            else:
                sidecar = sibling_url(path_or_url, manifest["arrays_file"])
                data = read_url_bytes(
                    sidecar, "partition arrays file", _CREATE_HINT.format(path_or_url)
                )
                if hashlib.sha256(data).hexdigest() != manifest["arrays_sha256"]:
                    raise ValueError(f"arrays file {sidecar} does not match its checksum")
                with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                    arrays = {name: npz[name] for name in npz.files}
            partition = cls(
                data_spec=str(manifest["data_spec"]),
                data_fingerprint=str(manifest["data_fingerprint"]),
                encoder=str(manifest["encoder"]),
                k=int(manifest["k"]),
                fine=int(manifest["fine"]),
                seed=int(manifest["seed"]),
                balanced=bool(manifest["balanced"]),
                sizes=tuple(int(s) for s in manifest["sizes"]),
                version=str(manifest["version"]),
                encoder_state={
                    name.split("/", 1)[1]: value
                    for name, value in arrays.items()
                    if name.startswith("encoder_state/")
                },
                **{name: arrays[name].astype(_ARRAY_DTYPES[name]) for name in _ARRAY_FIELDS},
            )
            partition.validate()
            if manifest.get("fingerprint") not in (None, partition.fingerprint):
                raise ValueError("content does not match the recorded fingerprint")
        except HetdiffError:
            raise
        except (ValueError, KeyError, TypeError, OSError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise HetdiffError(
                f"partition file {path_or_url} is corrupt ({reason}); re-run `hetdiff cluster`"
            ) from err
        return partition

    def validate(self) -> None:
        """Raise ``ValueError`` if shapes, ranges or sizes are inconsistent."""
        fine_shape, coarse_shape = self.fine_centroids.shape, self.coarse_centroids.shape
        if self.k < 1 or self.fine < self.k:
            raise ValueError(f"bad counts k={self.k}, fine={self.fine}")
        if len(fine_shape) != 2 or fine_shape[0] != self.fine:
            raise ValueError(f"fine_centroids shape {fine_shape} does not match fine={self.fine}")
        if coarse_shape != (self.k, fine_shape[1]):
            raise ValueError(f"coarse_centroids shape {coarse_shape} does not match k={self.k}")
        if self.fine_to_coarse.shape != (self.fine,):
            raise ValueError(f"fine_to_coarse shape {self.fine_to_coarse.shape} is not (fine,)")
        if self.ids.shape != self.clusters.shape or self.ids.ndim != 1:
            raise ValueError(f"ids {self.ids.shape} and clusters {self.clusters.shape} differ")
        if len(np.unique(self.ids)) != len(self.ids):
            raise ValueError("sample ids are not unique")
        for name in ("clusters", "fine_to_coarse"):
            values = getattr(self, name)
            if values.size and (values.min() < 0 or values.max() >= self.k):
                raise ValueError(f"{name} outside [0, {self.k})")
        if tuple(np.bincount(self.clusters, minlength=self.k).tolist()) != self.sizes:
            raise ValueError("sizes do not match the cluster assignment")


# ---------------------------------------------------------------------------------------------
# Building partitions
# ---------------------------------------------------------------------------------------------


def cluster_dataset(
    dataset: Any,
    k: int,
    fine: int | None = None,
    features: str = DEFAULT_ENCODER,
    seed: int = 0,
    balanced: bool = False,
    cache_dir: str | None = None,
    progress: bool = True,
    *,
    resolution: int | None = None,
    pca_dim: int | None = None,
    niter: int = 20,
) -> Partition:
    """Two-stage k-means of ``dataset`` (an ``ImageDataset``) into ``k`` expert shards.

    ``fine`` defaults to ``min(1024, max(k, N // 20))``. Features come from ``features`` (see
    :func:`hetdiff.data.features.get_encoder`; ``resolution`` / ``pca_dim`` are its options)
    and are cached under ``cache_dir`` (default :func:`default_cache_dir`). Deterministic for
    a seed.
    """
    n = len(dataset.images)
    fine = default_fine_count(n, k) if fine is None else int(fine)
    check_cluster_counts(n, k, fine)
    encoder = get_encoder(features, resolution=resolution, pca_dim=pca_dim)
    x = compute_features(
        dataset.images,
        encoder,
        fingerprint=dataset.fingerprint,
        cache_dir=default_cache_dir() if cache_dir is None else cache_dir,
        progress=progress,
    )
    result = two_stage_kmeans(x, k, fine, seed=seed, balanced=balanced, niter=niter)
    clusters = result.clusters.astype(np.int64)
    return Partition(
        data_spec=str(dataset.spec),
        data_fingerprint=str(dataset.fingerprint),
        encoder=encoder.key,
        k=k,
        fine=fine,
        seed=seed,
        balanced=balanced,
        fine_centroids=result.fine_centroids,
        coarse_centroids=result.coarse_centroids,
        fine_to_coarse=result.fine_to_coarse.astype(np.int64),
        ids=_as_numpy_ids(dataset.ids),
        clusters=clusters,
        sizes=tuple(np.bincount(clusters, minlength=k).tolist()),
        encoder_state=encoder.state(),
    )


def random_partition(dataset: Any, k: int, seed: int = 0) -> Partition:
    """Baseline: a seeded random split into ``k`` shards of equal size (+-1), no centroids."""
    n = len(dataset.images)
    check_cluster_counts(n, k, k)
    clusters = np.empty(n, dtype=np.int64)
    clusters[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return Partition(
        data_spec=str(dataset.spec),
        data_fingerprint=str(dataset.fingerprint),
        encoder="random",
        k=k,
        fine=k,
        seed=seed,
        balanced=True,
        fine_centroids=np.zeros((k, 0), dtype=np.float32),
        coarse_centroids=np.zeros((k, 0), dtype=np.float32),
        fine_to_coarse=np.arange(k, dtype=np.int64),
        ids=_as_numpy_ids(dataset.ids),
        clusters=clusters,
        sizes=tuple(np.bincount(clusters, minlength=k).tolist()),
    )


def assign_images(
    partition: Partition, images: Tensor, *, batch_size: int = 128, progress: bool = False
) -> np.ndarray:
    """Cluster of new images ``(M, C, H, W)`` in ``[-1, 1]``, encoded as the partition's were.

    The encoder is rebuilt from ``partition.encoder`` and its saved state (never refitted).
    """
    if partition.encoder == "random":
        raise HetdiffError("a random partition cannot assign new images; it has no centroids")
    encoder = get_encoder(partition.encoder, state=partition.encoder_state)
    x = compute_features(images, encoder, batch_size=batch_size, progress=progress, fit=False)
    return partition.assign_features(x)


def _manifest_text(manifest: dict[str, Any]) -> str:
    """Indented JSON with every leaf value (e.g. a long array) on one line."""

    def render(value: Any, depth: int) -> str:
        if not isinstance(value, dict) or not value:
            return json.dumps(value)
        pad = " " * (depth + 1)
        keys = sorted(value, key=lambda k: (isinstance(value[k], dict), k))  # leaves first
        items = [f"{pad}{json.dumps(k)}: {render(value[k], depth + 1)}" for k in keys]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"

    return render(manifest, 0) + "\n"


def _as_numpy_ids(ids: Any) -> np.ndarray:
    return np.asarray(ids.numpy() if isinstance(ids, Tensor) else ids, dtype=np.int64).copy()


# ---------------------------------------------------------------------------------------------
# Local paths and fsspec URLs
# ---------------------------------------------------------------------------------------------


def sidecar_name(path_or_url: str) -> str:
    """File name of the arrays sidecar: ``partition.json`` -> ``partition.arrays.npz``."""
    name = posixpath.basename(str(path_or_url).rstrip("/"))
    stem = name[: -len(".json")] if name.endswith(".json") else name
    return f"{stem}.arrays.npz"
