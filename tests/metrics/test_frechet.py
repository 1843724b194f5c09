"""The Frechet distance of feature sets: both routes equal the covariance formula."""

import numpy as np
import pytest

from hetdiff.errors import HetdiffError
from hetdiff.metrics.fid import fid_from_features
from hetdiff.metrics.frechet import _gram_route, frechet_distance_features


@pytest.mark.parametrize("shape", [((40, 300), (60, 300)), ((400, 6), (300, 6))])
def test_both_routes_equal_the_covariance_formula(shape):
    rng = np.random.default_rng(0)
    a = rng.normal(size=shape[0])
    b = 1.3 * rng.normal(size=shape[1]) + 0.2
    expected = fid_from_features(a, b)
    # rank-deficient covariances: the covariance route's clipped square roots of ~1e-15
    # eigenvalues carry ~1e-8 relative error, the Gram route none of them
    assert _gram_route(a, b) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance_features(a, b) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-8)


def test_bad_shapes_are_refused():
    with pytest.raises(HetdiffError, match="two"):
        frechet_distance_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(HetdiffError, match="two"):
        frechet_distance_features(np.zeros((1, 3)), np.zeros((5, 3)))
