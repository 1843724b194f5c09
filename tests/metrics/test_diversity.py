"""Intra-class diversity: mean pairwise feature distance among samples of one label."""

import numpy as np
import pytest
import torch

from hetdiff.errors import HetdiffError
from hetdiff.metrics.diversity import (
    image_features,
    intra_class_diversity,
    mean_pairwise_distance,
)

# a 3-4-5 triangle: |a - b| = 5, |a - c| = 4, |b - c| = 3 -> mean 4
TRIANGLE = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])


def test_mean_pairwise_distance_of_a_known_set():
    assert mean_pairwise_distance(TRIANGLE) == 4.0
    assert mean_pairwise_distance(TRIANGLE[::-1]) == 4.0  # order does not matter
    assert mean_pairwise_distance(TRIANGLE[:2]) == 5.0
    # one duplicate: pairs (a, a) 0, (a, b) 5 twice -> 10 / 3
    assert mean_pairwise_distance(TRIANGLE[[0, 0, 1]]) == pytest.approx(10 / 3, abs=1e-15)


def test_identical_features_have_zero_diversity():
    row = np.random.default_rng(0).normal(size=(1, 1280)) * 10
    for n in (2, 30, 100):  # also past the size where cdist would switch to the matmul shortcut
        assert mean_pairwise_distance(np.repeat(row, n, axis=0)) == 0.0


def test_intra_class_diversity_averages_the_classes_with_two_samples_or_more():
    features = np.concatenate([TRIANGLE, [[1.0, 1.0], [1.0, 2.0]], [[9.0, 9.0]]])
    labels = np.array([0, 0, 0, 1, 1, 2])  # class 2 has one sample: skipped
    mean, per_class = intra_class_diversity(features, labels)
    assert per_class == {0: 4.0, 1: 1.0}
    assert mean == 2.5
    assert intra_class_diversity(features, torch.from_numpy(labels), min_count=3) == (
        4.0,
        {0: 4.0},
    )


def test_identical_images_have_zero_diversity_and_known_pixels_a_known_value():
    images = torch.rand(1, 1, 16, 16).mul(2).sub(1).repeat(4, 1, 1, 1)
    assert intra_class_diversity(image_features(images), np.zeros(4))[0] == 0.0
    # pixels: an all -1 and an all +1 2x2 image differ by 2 in 4 pixels -> distance 4
    two = torch.stack([torch.full((1, 2, 2), -1.0), torch.full((1, 2, 2), 1.0)])
    assert mean_pairwise_distance(image_features(two, encoder="pixels")) == 4.0


def test_bad_input_is_one_line_error():
    with pytest.raises(HetdiffError, match="at least 2 samples, got shape \\(1, 4\\)"):
        mean_pairwise_distance(np.zeros((1, 4)))
    with pytest.raises(HetdiffError, match="at least 2 samples"):
        mean_pairwise_distance(np.zeros(5))
    with pytest.raises(HetdiffError, match="no class has 2 or more samples"):
        intra_class_diversity(TRIANGLE, np.array([0, 1, 2]))
    with pytest.raises(HetdiffError, match="one label per feature row: 3 rows"):
        intra_class_diversity(TRIANGLE, np.array([0, 0]))
