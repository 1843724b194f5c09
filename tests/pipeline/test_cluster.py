"""``hetdiff.pipeline.cluster``: where the montage goes and which images it shows."""

from __future__ import annotations

import torch

from hetdiff.data.datasets import load_dataset
from hetdiff.data.partition import random_partition
from hetdiff.pipeline.cluster import cluster_montage_rows, montage_path, size_table


def test_montage_path_sits_beside_the_manifest():
    assert montage_path("runs/a/partition.json") == "runs/a/partition.montage.png"
    assert montage_path("p.json") == "p.montage.png"
    assert montage_path("s3://bucket/x/part") == "s3://bucket/x/part.montage.png"


def test_montage_rows_are_seeded_members_of_each_cluster_in_id_order():
    dataset = load_dataset("digits")
    partition = random_partition(dataset, 3, seed=0)
    rows = cluster_montage_rows(partition, dataset, per_row=5, seed=1)
    assert [len(row) for row in rows] == [5, 5, 5]
    for cluster, row in enumerate(rows):
        members = dataset.subset(partition.ids_of(cluster)).images
        for image in row:  # every image is one of the cluster's own
            assert (members == image).flatten(1).all(dim=1).any()
    again = cluster_montage_rows(partition, dataset, per_row=5, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(rows, again, strict=True))
    other = cluster_montage_rows(partition, dataset, per_row=5, seed=2)
    assert not all(torch.equal(a, b) for a, b in zip(rows, other, strict=True))
    big = cluster_montage_rows(partition, dataset, per_row=10_000, seed=1)
    assert [len(row) for row in big] == list(partition.sizes)


def test_size_table_lists_each_cluster_with_its_share():
    dataset = load_dataset("digits")
    partition = random_partition(dataset, 2, seed=0)
    lines = size_table(partition, dataset).splitlines()
    assert lines[0].split()[:3] == ["cluster", "size", "share"] and len(lines) == 3
    for cluster, size in enumerate(partition.sizes):
        assert lines[1 + cluster].split()[:2] == [str(cluster), str(size)]
        assert lines[1 + cluster].split()[3:] == [str(size)]  # one source: digits
