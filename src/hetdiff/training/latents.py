"""Encode a dataset into an autoencoder's latent space once, and cache the latents on disk.

The result is an ordinary ``ImageDataset`` whose ``images`` are latents (N, c, h, h): the same
labels, ids and sources, a fingerprint that hashes the pixel fingerprint with the autoencoder's
identity, so experts, router, clustering and distillation train on it unchanged. The cache file
``$HETDIFF_CACHE_DIR/latents/<key>.safetensors`` is keyed by that fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import safetensors.torch
import torch

from hetdiff.data.datasets import ImageDataset
from hetdiff.io import atomic_path, default_cache_dir
from hetdiff.models.autoencoder import Autoencoder, IdentityAutoencoder


def latent_fingerprint(dataset: ImageDataset, autoencoder: Autoencoder) -> str:
    """sha256 of the pixel data's fingerprint, resolution, channels and the autoencoder dict."""
    identity = json.dumps(
        [dataset.fingerprint, dataset.resolution, dataset.channels, autoencoder.to_dict()],
        sort_keys=True,
    )
    return hashlib.sha256(b"hetdiff-latents-v1" + identity.encode()).hexdigest()


def encode_dataset(
    dataset: ImageDataset,
    autoencoder: Autoencoder,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
) -> ImageDataset:
    """``dataset`` with its images replaced by latents, read from the cache when present.

    The identity autoencoder returns ``dataset`` itself. Otherwise latents are computed in
    batches of ``batch_size`` (posterior means: deterministic) and written atomically.
    """
    if isinstance(autoencoder, IdentityAutoencoder):
        return dataset
    autoencoder.latent_shape(dataset.channels, dataset.resolution)  # one-line error if unfit
    fingerprint = latent_fingerprint(dataset, autoencoder)
    path = Path(cache_dir or default_cache_dir()) / "latents" / f"{fingerprint[:32]}.safetensors"
    if path.is_file():
        latents = safetensors.torch.load_file(str(path))["latents"]
    else:
        parts = [
            autoencoder.encode(dataset.images[start : start + batch_size]).float().cpu()
            for start in range(0, len(dataset), batch_size)
        ]
        latents = torch.cat(parts).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            safetensors.torch.save_file(
                {"latents": latents}, str(tmp), metadata={"fingerprint": fingerprint}
            )
    return dataclasses.replace(dataset, images=latents, fingerprint=fingerprint)
