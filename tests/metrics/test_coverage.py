"""Cluster coverage and class accuracy on cases with known answers (digits, 8 px)."""

import numpy as np
import pytest
import torch

from hetdiff.data.datasets import load_dataset
from hetdiff.data.partition import cluster_dataset, random_partition
from hetdiff.errors import HetdiffError
from hetdiff.metrics.coverage import (
    assign_to_clusters,
    class_accuracy,
    cluster_coverage,
    cluster_fractions,
)
from hetdiff.metrics.judge import get_judge, holdout_rows


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", resolution=8)


def test_cluster_fractions_and_total_variation_are_exact():
    assert cluster_fractions(np.array([0, 2, 2, 2]), 3).tolist() == [0.25, 0.0, 0.75]
    one_cluster = cluster_coverage(np.zeros(50, dtype=int), (10, 30, 60), draws=50)
    assert one_cluster.total_variation.value == pytest.approx(0.9)  # 1 - q_0
    assert [iv.value for iv in one_cluster.sample_fractions] == [1.0, 0.0, 0.0]
    assert one_cluster.data_fractions == (0.1, 0.3, 0.6)
    rng = np.random.default_rng(0)
    matched = cluster_coverage(rng.choice(3, size=4000, p=[0.1, 0.3, 0.6]), (1, 3, 6))
    assert matched.total_variation.value < 0.03
    for interval, q in zip(matched.sample_fractions, matched.data_fractions, strict=True):
        assert q in interval
    record = matched.to_dict()
    assert len(record["sample_fractions_ci"]) == 3 and record["data_fractions"] == [0.1, 0.3, 0.6]
    with pytest.raises(HetdiffError, match="0..2"):
        cluster_coverage(np.array([0, 3]), (1, 1, 1))


def test_the_partition_assigns_a_clusters_own_images_to_it(digits):
    partition = cluster_dataset(digits, 2, fine=8, features="pixels", progress=False)
    ids = partition.ids_of(1)[:200]
    rows = torch.from_numpy(np.searchsorted(digits.ids.numpy(), ids))
    assigned = assign_to_clusters(partition, digits.images[rows])
    coverage = cluster_coverage(assigned, partition.sizes, draws=50)
    assert coverage.sample_fractions[1].value == 1.0  # its own shard, assigned as the data was
    assert coverage.total_variation.value == pytest.approx(1 - partition.sizes[1] / len(digits))
    assert assign_to_clusters(random_partition(digits, 2), digits.images[:4]) is None


def test_class_accuracy_of_labelled_images_under_the_judge(digits, tmp_path):
    judge = get_judge(digits, 300, 0.25, cache_dir=tmp_path)
    _, held = holdout_rows(len(digits), 0.25)
    images, labels = digits.images[held], digits.labels[held]
    right = class_accuracy(judge, images, labels, draws=100)
    assert right.value == judge.spec.accuracy and right.value >= 0.9 and right.low < right.high
    wrong = class_accuracy(judge, images, (labels + 1) % 10, draws=100)  # asked for another class
    assert wrong.value <= 0.1
    with pytest.raises(HetdiffError, match="labels"):
        class_accuracy(judge, images, labels[:3])
    with pytest.raises(HetdiffError, match="null label -1"):  # unconditional: no class to hit
        class_accuracy(judge, images, labels.clone().fill_(-1))
