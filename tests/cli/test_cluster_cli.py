"""``hetdiff cluster`` in-process: manifest, size table, montage PNG; montage pixels exactly."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hetdiff.cli import main
from hetdiff.data.datasets import load_dataset
from hetdiff.data.montage import montage_rows, save_grid
from hetdiff.data.partition import Partition


def test_cluster_command_writes_manifest_and_montage(tmp_path, capsys) -> None:
    out = tmp_path / "run" / "partition.json"
    argv = ["cluster", "--data", "digits", "--k", "3", "--features", "pixels", "--quiet"]
    argv += ["--per-row", "5", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    partition = Partition.load(str(out))
    dataset = load_dataset("digits")
    partition.check_dataset(dataset)
    assert partition.k == 3 and sum(partition.sizes) == len(dataset)
    for cluster, size in enumerate(partition.sizes):
        assert f"{cluster:>7} {size:>7}" in printed  # the size table lists every cluster
    montage = Image.open(tmp_path / "run" / "partition.montage.png")
    montage.load()
    # 3 rows and 5 columns of 8x8 images with 2-pixel gaps.
    assert montage.size == (2 + 5 * 10, 2 + 3 * 10) and montage.mode == "L"
    # The top-left cell of each row is an image of that cluster.
    pixels = np.asarray(montage)
    for cluster in range(3):
        cell = pixels[2 + cluster * 10 : 10 + cluster * 10, 2:10]
        members = dataset.images[
            torch.from_numpy(np.isin(dataset.ids.numpy(), partition.ids_of(cluster)))
        ]
        as_bytes = ((members[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
        assert (as_bytes == cell).all(axis=(1, 2)).any()


def test_cluster_command_bad_k_is_one_line_exit_2(tmp_path, capsys) -> None:
    out = tmp_path / "p.json"
    argv = ["cluster", "--data", "digits", "--k", "5000", "--features", "pixels", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "hetdiff: error: K=5000 is larger than the number of images (1797); use --k <= 1797"
    )
    assert not out.exists()


def test_save_grid_pixels_are_exact(tmp_path) -> None:
    images = torch.tensor([-1.0, 0.0, 1.0, 0.5]).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    save_grid(images, str(tmp_path / "grid.png"), nrow=3, pad=1)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (1 + 2 * 3, 1 + 3 * 3, 3)
    assert (grid[1:3, 1:3] == 0).all() and (grid[1:3, 4:6] == 128).all()
    assert (grid[1:3, 7:9] == 255).all() and (grid[4:6, 1:3] == 191).all()
    assert (grid[4:6, 4:9] == 255).all()  # missing cells stay white


def test_montage_rows_of_different_lengths(tmp_path) -> None:
    rows = [-torch.ones(3, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(0, 1, 4, 4)]
    montage_rows(rows, str(tmp_path / "rows.png"), pad=0)
    image = np.asarray(Image.open(tmp_path / "rows.png"))
    assert image.shape == (12, 12)
    assert (image[:4] == 0).all() and (image[4:8, :4] == 128).all()
    assert (image[4:8, 4:] == 255).all() and (image[8:] == 255).all()  # blank cells are white
