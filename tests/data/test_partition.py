"""Partition manifests: determinism, re-assignment, round trips (local, sidecar, fsspec), errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hetdiff.data.partition as partition_module
from hetdiff.data.datasets import ImageDataset, load_dataset
from hetdiff.data.partition import (
    Partition,
    assign_images,
    cluster_dataset,
    random_partition,
)
from hetdiff.errors import HetdiffError


def tiny_dataset(n: int = 10, seed: int = 0) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    return ImageDataset(
        images=torch.rand(n, 1, 4, 4, generator=generator) * 2 - 1,
        labels=torch.zeros(n, dtype=torch.int64),
        ids=torch.arange(100, 100 + n, dtype=torch.int64),
        sources=torch.zeros(n, dtype=torch.int64),
        class_names=("tiny/0",),
        source_names=("tiny",),
        spec="tiny",
        fingerprint=f"tiny-{n}-{seed}",
    )


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_partition(digits: ImageDataset, tmp_path_factory) -> Partition:
    cache = tmp_path_factory.mktemp("cache")
    return cluster_dataset(digits, 4, features="pixels", seed=0, cache_dir=cache, progress=False)


def assert_same(a: Partition, b: Partition) -> None:
    for name in ("data_spec", "data_fingerprint", "encoder", "k", "fine", "seed", "balanced"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.sizes == b.sizes and a.version == b.version
    for name in ("fine_centroids", "coarse_centroids", "fine_to_coarse", "ids", "clusters"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y)
    assert a.encoder_state.keys() == b.encoder_state.keys()
    for key, value in a.encoder_state.items():
        np.testing.assert_array_equal(value, b.encoder_state[key])
    assert a.fingerprint == b.fingerprint


def test_partition_contents(digits: ImageDataset, digits_partition: Partition) -> None:
    p = digits_partition
    assert p.k == 4 and p.fine == 1797 // 20 and p.encoder == "pixels"
    assert p.data_fingerprint == digits.fingerprint and p.data_spec == "digits"
    assert p.fine_centroids.shape == (p.fine, 64) and p.coarse_centroids.shape == (4, 64)
    np.testing.assert_array_equal(p.ids, digits.ids.numpy())
    assert sum(p.sizes) == len(digits) and min(p.sizes) > 0
    assert p.version.startswith("hetdiff ")
    # ids_of partitions the ids; cluster_of inverts it.
    joined = np.sort(np.concatenate([p.ids_of(c) for c in range(4)]))
    np.testing.assert_array_equal(joined, np.sort(p.ids))
    for cluster in range(4):
        assert (p.cluster_of(p.ids_of(cluster)) == cluster).all()
    # Pixel clusters beat chance at separating digit classes (purity well above 10 %).
    labels = digits.labels.numpy()
    purity = sum(np.bincount(labels[p.clusters == c]).max() for c in range(4)) / len(labels)
    assert purity > 0.3


def test_deterministic_for_a_seed(digits: ImageDataset, digits_partition: Partition, tmp_path):
    again = cluster_dataset(
        digits, 4, features="pixels", seed=0, cache_dir=tmp_path, progress=False
    )
    assert_same(again, digits_partition)
    other = cluster_dataset(
        digits, 4, features="pixels", seed=1, cache_dir=tmp_path, progress=False
    )
    assert other.fingerprint != digits_partition.fingerprint


def test_assigning_the_training_images_reproduces_their_clusters(
    digits: ImageDataset, digits_partition: Partition
) -> None:
    clusters = assign_images(digits_partition, digits.images)
    np.testing.assert_array_equal(clusters, digits_partition.cluster_of(digits.ids))


def test_pca_partition_reassigns_after_a_round_trip(digits: ImageDataset, tmp_path) -> None:
    p = cluster_dataset(
        digits, 3, features="pixels", pca_dim=12, cache_dir=tmp_path, progress=False
    )
    assert p.encoder == "pixels+pca12" and p.fine_centroids.shape[1] == 12
    p.save(str(tmp_path / "p.json"))
    loaded = Partition.load(str(tmp_path / "p.json"))
    assert_same(loaded, p)
    np.testing.assert_array_equal(assign_images(loaded, digits.images), p.clusters)


def test_round_trip_inline_json(digits_partition: Partition, tmp_path) -> None:
    path = tmp_path / "sub" / "partition.json"
    digits_partition.save(str(path))
    manifest = json.loads(path.read_text())
    assert "arrays" in manifest and manifest["fingerprint"] == digits_partition.fingerprint
    assert not (tmp_path / "sub" / "partition.arrays.npz").exists()
    assert_same(Partition.load(str(path)), digits_partition)


def test_round_trip_with_sidecar(digits_partition: Partition, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(partition_module, "INLINE_MAX_ELEMENTS", 0)
    path = tmp_path / "partition.json"
    digits_partition.save(str(path))
    manifest = json.loads(path.read_text())
    assert manifest["arrays_file"] == "partition.arrays.npz" and "arrays" not in manifest
    assert_same(Partition.load(str(path)), digits_partition)
    # A sidecar that does not match the manifest is refused.
    sidecar = tmp_path / "partition.arrays.npz"
    sidecar.write_bytes(sidecar.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(HetdiffError, match="corrupt.*checksum"):
        Partition.load(str(path))


@pytest.mark.parametrize("inline", [True, False])
def test_round_trip_fsspec_urls(digits_partition: Partition, tmp_path, monkeypatch, inline) -> None:
    if not inline:
        monkeypatch.setattr(partition_module, "INLINE_MAX_ELEMENTS", 0)
    for url in (f"memory://parts{int(inline)}/p.json", f"file://{tmp_path}/p.json"):
        digits_partition.save(url)
        assert_same(Partition.load(url), digits_partition)


def test_random_partition_round_trips(digits: ImageDataset, tmp_path) -> None:
    p = random_partition(digits, 5, seed=0)
    assert p.encoder == "random" and max(p.sizes) - min(p.sizes) <= 1
    assert sum(p.sizes) == len(digits)
    assert not np.array_equal(random_partition(digits, 5, seed=1).clusters, p.clusters)
    p.save(str(tmp_path / "r.json"))
    assert_same(Partition.load(str(tmp_path / "r.json")), p)
    with pytest.raises(HetdiffError, match="random partition cannot assign"):
        assign_images(p, digits.images[:3])


def test_fingerprint_mismatch_is_refused(digits: ImageDataset, digits_partition: Partition):
    digits_partition.check_dataset(digits)  # the data it was built on passes
    other = digits.subset(digits.ids[:100])
    with pytest.raises(HetdiffError) as err:
        digits_partition.check_dataset(other)
    message = str(err.value)
    assert digits.fingerprint in message and other.fingerprint in message
    assert "re-run `hetdiff cluster`" in message and "\n" not in message


def test_lookup_errors(digits_partition: Partition) -> None:
    with pytest.raises(HetdiffError, match=r"cluster 7 not in partition with K=4"):
        digits_partition.ids_of(7)
    with pytest.raises(HetdiffError, match=r"cluster -1 not in partition with K=4"):
        digits_partition.ids_of(-1)
    with pytest.raises(HetdiffError, match="sample id 5 is not in this partition"):
        digits_partition.cluster_of([int(digits_partition.ids[0]), 5])


def test_missing_and_corrupt_files(tmp_path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(HetdiffError, match=r"nope.json not found; create it with `hetdiff cluster"):
        Partition.load(str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "hetdiff-partition/1", "k": ')
    with pytest.raises(HetdiffError, match="broken.json is corrupt") as err:
        Partition.load(str(broken))
    assert "\n" not in str(err.value)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(HetdiffError, match="other.json is corrupt"):
        Partition.load(str(other))


def test_tampered_manifest_is_refused(digits_partition: Partition, tmp_path) -> None:
    path = tmp_path / "p.json"
    digits_partition.save(str(path))
    manifest = json.loads(path.read_text())
    manifest["sizes"][0] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(HetdiffError, match="corrupt.*sizes do not match"):
        Partition.load(str(path))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 11}, r"K=11 is larger than the number of images \(10\)"),
        ({"k": 0}, "K=0 clusters is invalid"),
        ({"k": 4, "fine": 2}, "fine count 2 is smaller than K=4"),
        ({"k": 2, "fine": 20}, "data set has 10 images, fewer than the 20 fine clusters"),
        ({"k": 2, "features": "resnet"}, "unknown feature encoder 'resnet'"),
    ],
)
def test_bad_input_is_a_one_line_error(kwargs, message, tmp_path) -> None:
    with pytest.raises(HetdiffError, match=message) as err:
        cluster_dataset(tiny_dataset(), cache_dir=tmp_path, progress=False, **kwargs)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.rglob("*.npy"))  # refused before any features were computed
