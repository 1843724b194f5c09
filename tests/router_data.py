"""Synthetic data sets and partitions for the router tests (importable: tests/ is on sys.path)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from hetdiff.data.datasets import ImageDataset
from hetdiff.data.partition import Partition


def make_dataset(images: torch.Tensor, labels: torch.Tensor, name: str) -> ImageDataset:
    """An in-memory data set with ids 1000.. and a fingerprint of its bytes."""
    n = images.shape[0]
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    return ImageDataset(
        images=images,
        labels=labels,
        ids=torch.arange(1000, 1000 + n),
        sources=torch.zeros(n, dtype=torch.long),
        class_names=tuple(f"{name}/c{i}" for i in range(int(labels.max()) + 1)),
        source_names=(name,),
        spec=name,
        fingerprint=digest,
    )


def make_partition(dataset: ImageDataset, clusters: np.ndarray, k: int, seed: int = 0) -> Partition:
    """A partition of ``dataset`` with the given cluster per row (no centroids)."""
    return Partition(
        data_spec=dataset.spec,
        data_fingerprint=dataset.fingerprint,
        encoder="test",
        k=k,
        fine=k,
        seed=seed,
        balanced=False,
        fine_centroids=np.zeros((k, 0), np.float32),
        coarse_centroids=np.zeros((k, 0), np.float32),
        fine_to_coarse=np.arange(k, dtype=np.int64),
        ids=dataset.ids.numpy().copy(),
        clusters=clusters.astype(np.int64),
        sizes=tuple(np.bincount(clusters, minlength=k).tolist()),
    )


def quadrant_data() -> tuple[ImageDataset, Partition]:
    """8x8 images: cluster k lights quadrant k (+ small noise); class labels are unrelated.
    Cluster sizes 40/25/20/15 %, so the prior alone gets 40 %."""
    gen = torch.Generator().manual_seed(0)
    n = 400
    clusters = np.repeat(np.arange(4), [160, 100, 80, 60])
    images = torch.full((n, 1, 8, 8), -0.8)
    for i, k in enumerate(clusters):
        r, c = divmod(int(k), 2)
        images[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 0.8
    images += 0.05 * torch.randn(images.shape, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    dataset = make_dataset(images, labels, "quadrants")
    return dataset, make_partition(dataset, clusters, 4)


def label_decided_data(seed: int) -> tuple[ImageDataset, Partition]:
    """256 pure-noise 8x8 images with 4 classes; the cluster is label // 2 (K = 2)."""
    gen = torch.Generator().manual_seed(seed)
    n = 256
    labels = torch.randint(0, 4, (n,), generator=gen)
    dataset = make_dataset(torch.randn(n, 1, 8, 8, generator=gen).clamp(-1, 1), labels, "noise")
    return dataset, make_partition(dataset, (labels.numpy() // 2).astype(np.int64), 2)
