import numpy as np
import pytest
import torch

from hetdiff.errors import HetdiffError
from hetdiff.metrics.fid import (
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    inception_features,
    reference_stats,
)


def test_frechet_distance_matches_the_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    d1, d2 = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6)
    cov1, cov2 = q @ np.diag(d1) @ q.T, q @ np.diag(d2) @ q.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + (d1 + d2 - 2 * np.sqrt(d1 * d2)).sum()
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_general_covariances_against_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    covmean = scipy_linalg.sqrtm(cov1 @ cov2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(cov1 + cov2 - 2 * covmean)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8)


def test_inception_features_rank_real_images_closer_than_noise(tmp_path):
    """8 images per set: features are 2048-d and finite; FID(digits, other digits) is far
    below FID(digits, noise); the cache round-trips."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:24].astype(np.float32) / 16.0 * 2 - 1
    images = torch.from_numpy(digits)[:, None]
    noise = torch.rand(8, 1, 8, 8) * 2 - 1
    feats = inception_features(images)
    assert feats.shape == (24, 2048) and np.isfinite(feats).all()
    real_vs_real = fid_from_features(feats[:8], feats[8:16])
    real_vs_noise = fid_from_features(feats[:8], inception_features(noise))
    assert real_vs_real < 0.7 * real_vs_noise
    mu, cov = reference_stats(images[:8], "digits-test", tmp_path)
    mu2, cov2 = reference_stats(images[:8], "digits-test", tmp_path)
    assert np.array_equal(mu, mu2) and np.array_equal(cov, cov2)
    # the same 8 images in a batch of their own (float32 results depend on the batch shape
    # at 1e-6 under OMP_NUM_THREADS=1, so compare like with like)
    assert np.allclose(mu, gaussian_stats(inception_features(images[:8]))[0])
    assert np.allclose(mu, gaussian_stats(feats[:8])[0], rtol=1e-5, atol=1e-5)


def test_bad_input():
    with pytest.raises(HetdiffError, match="shape"):
        inception_features(torch.zeros(2, 2, 8, 8))
    with pytest.raises(HetdiffError, match="at least 2"):
        gaussian_stats(np.zeros((1, 4)))
