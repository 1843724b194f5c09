"""Precision, recall, density and coverage on sets with known answers, against a brute-force
float64 reference of the papers' definitions."""

import numpy as np
import pytest

import hetdiff.metrics.manifold as manifold
from hetdiff.errors import HetdiffError
from hetdiff.metrics.manifold import build_manifolds, prdc, prdc_intervals


def brute_force(real, fake, k):
    """The definitions (Kynkaanniemi et al. 2019, Naeem et al. 2020) with full matrices."""
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_rf = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # (N, M)
    r_real, r_fake = np.sort(d_rr, 1)[:, k], np.sort(d_ff, 1)[:, k]
    return {
        "precision": (d_rf <= r_real[:, None]).any(0).mean(),
        "recall": (d_rf <= r_fake[None]).any(1).mean(),
        "density": (d_rf <= r_real[:, None]).sum(0).mean() / k,
        "coverage": (d_rf.min(1) <= r_real).mean(),
    }


def mixture(n, classes, rng, dim=6):
    """n points of 10 well-separated Gaussian classes; only ``classes`` are drawn from."""
    centres = np.random.default_rng(123).normal(scale=8.0, size=(10, dim))
    labels = rng.choice(classes, size=n)
    return centres[labels] + rng.normal(size=(n, dim)), labels


def test_identical_sets_give_full_precision_recall_coverage_and_density_k_plus_1_over_k():
    x = np.random.default_rng(0).normal(size=(300, 5))
    for k in (3, 5):
        scores = prdc(x, x, k)
        assert scores["precision"] == scores["recall"] == scores["coverage"] == 1.0
        # every real ball holds its own centre plus its k nearest neighbours
        assert scores["density"] == pytest.approx((k + 1) / k, abs=1e-12)


def test_two_samples_of_one_distribution_score_near_one():
    rng = np.random.default_rng(1)
    scores = prdc(rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4)), 5)
    assert 0.9 <= scores["density"] <= 1.1
    assert min(scores["precision"], scores["recall"], scores["coverage"]) >= 0.85


def test_missing_half_the_classes_loses_recall_and_coverage_but_not_precision():
    rng = np.random.default_rng(2)
    real, _ = mixture(2000, np.arange(10), rng)
    full, _ = mixture(2000, np.arange(10), rng)
    half, _ = mixture(2000, np.arange(5), rng)
    k = 5
    complete, missing = prdc_intervals(real, full, k), prdc_intervals(real, half, k)
    assert min(missing["precision"].value, complete["precision"].value) >= 0.9
    assert missing["precision"].high >= complete["precision"].low  # not lost: intervals meet
    for name in ("recall", "coverage"):
        assert complete[name].value >= 0.9
        assert 0.4 <= missing[name].value <= 0.6  # about half the real mass is covered
        assert missing[name].high < complete[name].low  # separated by their intervals


def test_matches_the_brute_force_definitions_across_chunks(monkeypatch):
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(120, 7)), 0.8 * rng.normal(size=(90, 7)) + 0.3
    expected = brute_force(real, fake, 4)
    assert prdc(real, fake, 4) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(manifold, "CHUNK", 16)  # several row chunks, same answer
    assert prdc(real, fake, 4) == pytest.approx(expected, abs=1e-12)
    per_fake = build_manifolds(real, fake, 4)
    assert per_fake.fake_real_balls.shape == (90,) and per_fake.real_covered.shape == (120,)


def test_intervals_hold_their_values_and_bad_input_is_refused():
    rng = np.random.default_rng(4)
    intervals = prdc_intervals(rng.normal(size=(400, 3)), rng.normal(size=(400, 3)), 5, 100, 0)
    for interval in intervals.values():
        assert interval.low <= interval.value <= interval.high and interval.draws == 100
    with pytest.raises(HetdiffError, match="more than k=5"):
        prdc(np.zeros((5, 2)), np.zeros((10, 2)), 5)
    with pytest.raises(HetdiffError, match="width"):
        prdc(np.zeros((10, 2)), np.zeros((10, 3)), 3)
    with pytest.raises(HetdiffError, match="k for the k-NN"):
        prdc(np.zeros((10, 2)), np.zeros((10, 2)), 0)
