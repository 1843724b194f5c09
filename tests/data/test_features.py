"""Feature encoders: exact pixel and PCA features, chunking, the on-disk cache, EfficientNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hetdiff.data.features import (
    EfficientNetLite0Encoder,
    PixelEncoder,
    available_encoders,
    compute_features,
    feature_cache_path,
    get_encoder,
)
from hetdiff.errors import HetdiffError


def _images(n: int, channels: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=generator) * 2 - 1


class CountingEncoder(PixelEncoder):
    """A pixel encoder that counts the images it encodes."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encoded += len(images)
        return super().encode(images)


def test_registry_names_keys_and_unknown_name() -> None:
    assert available_encoders() == ("efficientnet-lite0", "pixels")
    assert get_encoder("efficientnet-lite0").key == "efficientnet-lite0@112"
    assert get_encoder("efficientnet-lite0", resolution=224).key == "efficientnet-lite0@224"
    assert get_encoder("efficientnet-lite0@224").resolution == 224
    assert get_encoder("pixels").key == "pixels"
    assert get_encoder("pixels", pca_dim=16).key == "pixels+pca16"
    assert get_encoder("pixels+pca16").pca_dim == 16
    with pytest.raises(HetdiffError, match=r"unknown feature encoder 'clip'.*pixels") as err:
        get_encoder("clip")
    assert "\n" not in str(err.value)
    with pytest.raises(HetdiffError, match="option pca_dim=8 does not apply to encoder 'eff"):
        get_encoder("efficientnet-lite0", pca_dim=8)
    with pytest.raises(HetdiffError, match="option resolution=64 does not apply to encoder 'pix"):
        get_encoder("pixels", resolution=64)


def test_pixels_are_the_flattened_images() -> None:
    images = _images(5, channels=3, size=4)
    features = compute_features(images, get_encoder("pixels"), progress=False)
    assert features.shape == (5, 48) and features.dtype == np.float32
    np.testing.assert_array_equal(features, images.reshape(5, -1).numpy())


def test_pixel_pca_matches_a_float64_eigendecomposition() -> None:
    # Data with a clear spectrum: 3 strong directions plus small noise in 64-d.
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(64, 3)))[0]
    data = rng.normal(size=(400, 3)) * [3.0, 2.0, 1.0] @ basis.T + 0.01 * rng.normal(size=(400, 64))
    images = torch.from_numpy(data.astype(np.float32)).reshape(400, 1, 8, 8)
    encoder = PixelEncoder(pca_dim=3)
    features = compute_features(images, encoder, progress=False).astype(np.float64)
    flat = images.reshape(400, -1).double().numpy()
    centred = flat - flat.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred)
    top = eigvecs[:, ::-1][:, :3]
    # Same subspace (projections agree up to per-axis sign) and variances = top eigenvalues.
    reference = centred @ top
    for axis in range(3):
        sign = np.sign(reference[:, axis] @ features[:, axis])
        np.testing.assert_allclose(features[:, axis], sign * reference[:, axis], atol=1e-3)
    np.testing.assert_allclose((features**2).sum(axis=0), eigvals[::-1][:3], rtol=1e-4)
    np.testing.assert_allclose(encoder.components @ encoder.components.T, np.eye(3), atol=1e-5)


def test_pca_dim_too_large_is_refused() -> None:
    with pytest.raises(HetdiffError, match="PCA dimension 100 exceeds min"):
        compute_features(_images(10), PixelEncoder(pca_dim=100), progress=False)


def test_chunked_equals_one_batch() -> None:
    images = _images(37)
    whole = compute_features(images, PixelEncoder(pca_dim=5), batch_size=100, progress=False)
    chunked = compute_features(images, PixelEncoder(pca_dim=5), batch_size=4, progress=False)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


def test_cache_is_keyed_by_fingerprint_and_read_back_memory_mapped(tmp_path) -> None:
    images = _images(20)
    encoder = CountingEncoder()
    first = compute_features(images, encoder, fingerprint="abc", cache_dir=tmp_path, batch_size=8)
    assert encoder.encoded == 20
    path = feature_cache_path(tmp_path, "abc", "pixels")
    assert path.is_file() and isinstance(first, np.memmap)
    second = compute_features(images, encoder, fingerprint="abc", cache_dir=tmp_path)
    assert encoder.encoded == 20  # nothing re-encoded
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(second, images.reshape(20, -1).numpy())
    compute_features(images, encoder, fingerprint="other", cache_dir=tmp_path)
    assert encoder.encoded == 40  # a different fingerprint is a different cache entry


def test_efficientnet_features_shape_finite_and_cached(tmp_path) -> None:
    images = _images(64, channels=1, size=28)
    encoder = get_encoder("efficientnet-lite0", resolution=64)
    assert isinstance(encoder, EfficientNetLite0Encoder)
    first = compute_features(images, encoder, fingerprint="fp", cache_dir=tmp_path, progress=False)
    assert first.shape == (64, 1280) and first.dtype == np.float32
    assert np.isfinite(first).all() and first.std() > 0
    # The features depend on the image: two different images give different vectors.
    assert np.abs(first[0] - first[1]).max() > 1e-3

    def fail(_images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the cache should have been used")

    encoder.encode = fail  # type: ignore[method-assign]
    second = compute_features(images, encoder, fingerprint="fp", cache_dir=tmp_path)
    assert isinstance(second, np.memmap)
    np.testing.assert_array_equal(second, first)


def test_efficientnet_rejects_wrong_channel_count() -> None:
    with pytest.raises(HetdiffError, match=r"\(B, 1 or 3, H, W\), got \(2, 2, 8, 8\)"):
        EfficientNetLite0Encoder().encode(torch.zeros(2, 2, 8, 8))
