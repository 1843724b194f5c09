"""Built-in sources, unions, fingerprints, subsets, resizing and image folders."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hetdiff.data import sources
from hetdiff.data.datasets import (
    DEFAULT_DATA,
    ImageDataset,
    available_datasets,
    load_dataset,
    split_spec,
)
from hetdiff.data.npickle import read_ndarray_pickle
from hetdiff.data.sources import ID_STRIDE, IMAGEFOLDER_ID_BASE
from hetdiff.errors import HetdiffError


def assert_valid(data: ImageDataset, n: int, channels: int, size: int, classes: int) -> None:
    assert data.images.shape == (n, channels, size, size)
    assert data.images.dtype == torch.float32
    low, high = data.images.min().item(), data.images.max().item()
    assert -1.0 <= low < -0.99 and 0.99 < high <= 1.0  # in range and using all of it
    assert data.labels.dtype == data.ids.dtype == data.sources.dtype == torch.int64
    assert data.labels.min().item() >= 0 and data.labels.max().item() == classes - 1
    assert data.num_classes == classes and len(data) == n
    assert (data.resolution, data.channels) == (size, channels)
    assert torch.unique(data.ids).numel() == n
    assert len(data.fingerprint) == 64 and int(data.fingerprint, 16) >= 0


def one_line_error(excinfo: pytest.ExceptionInfo[HetdiffError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ----------------------------------------------------------------------------- built-ins


def test_mnist5k_matches_the_csv_exactly(mnist5k: ImageDataset, mnist_table: np.ndarray) -> None:
    assert_valid(mnist5k, 5000, 1, 28, 10)
    expected = mnist_table[:, :-1].reshape(-1, 1, 28, 28) / 255.0 * 2.0 - 1.0
    np.testing.assert_allclose(mnist5k.images.numpy(), expected, atol=1e-6)
    assert torch.equal(mnist5k.labels, torch.from_numpy(mnist_table[:, -1]))
    assert torch.equal(mnist5k.ids, torch.arange(5000))
    assert torch.bincount(mnist5k.labels).tolist() == [500] * 10
    assert mnist5k.class_names[7] == "mnist5k/seven" and mnist5k.source_names == ("mnist5k",)


def test_animal_mnist_matches_a_restricted_unpickler(animal: ImageDataset, package_file) -> None:
    """Our opcode walker must give exactly what numpy's own unpickling gives (allowlisted)."""

    class NumpyOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray")}
            assert (module, name) in allowed | {("numpy", "dtype")}, (module, name)
            if module == "numpy.core.multiarray":
                module = "numpy._core.multiarray" if hasattr(np, "_core") else module
            return super().find_class(module, name)

    folder = package_file("animal_mnist", "data", "Animal_MNIST")
    with gzip.open(folder / "animal_data_version_3.gz") as handle:
        images = NumpyOnly(handle).load()
    with gzip.open(folder / "animal_label_version_3.gz") as handle:
        labels = NumpyOnly(handle).load()
    assert_valid(animal, 10000, 1, 28, 10)
    np.testing.assert_allclose(animal.images[:, 0].numpy(), images / 255.0 * 2 - 1, atol=1e-6)
    assert torch.equal(animal.labels, torch.from_numpy(labels.astype(np.int64)))
    assert torch.bincount(animal.labels).tolist() == [1000] * 10
    assert torch.equal(animal.ids, torch.arange(10000) + ID_STRIDE)
    assert animal.class_names[6] == "animal-mnist/giraffe"
    assert animal.class_names[9] == "animal-mnist/zebra"


@pytest.mark.parametrize("protocol", [3, 4])
def test_ndarray_pickle_reader_round_trips(protocol: int) -> None:
    base = np.arange(60, dtype=">f4").reshape(3, 4, 5) / 7
    for array in (base, np.asfortranarray(base), base.astype(np.int64), base[:, ::2]):
        decoded = read_ndarray_pickle(pickle.dumps(array, protocol=protocol), "x")
        assert decoded.dtype == array.dtype.newbyteorder("=") and decoded.flags.writeable
        np.testing.assert_array_equal(decoded, array)


def test_ndarray_pickle_reader_refuses_other_globals() -> None:
    with pytest.raises(HetdiffError, match="posix.system|nt.system") as excinfo:
        read_ndarray_pickle(pickle.dumps(os.system, protocol=4), "evil.pkl")
    assert "refusing" in one_line_error(excinfo)


def test_digits_matches_sklearn() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    reference = datasets.load_digits()
    data = load_dataset("digits")
    assert_valid(data, 1797, 1, 8, 10)
    np.testing.assert_allclose(
        (data.images[:, 0].numpy() + 1) / 2 * 16, reference.images, atol=1e-5
    )
    assert torch.equal(data.labels, torch.from_numpy(reference.target.astype(np.int64)))
    assert data.ids[0].item() == 3 * ID_STRIDE


def test_fashion_mnist_loads_when_installed() -> None:
    if not (sources.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    data = load_dataset("fashion-mnist", resolution=16)
    assert_valid(data, 70000, 1, 16, 10)
    assert torch.bincount(data.labels).tolist() == [7000] * 10
    assert data.class_names[-1] == "fashion-mnist/ankle boot"
    assert data.ids[0].item() == 2 * ID_STRIDE and data.ids[-1].item() == 2 * ID_STRIDE + 69999


def test_fashion_mnist_missing_names_the_apt_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(HetdiffError) as excinfo:
        load_dataset("fashion-mnist")
    assert "apt-get install dataset-fashion-mnist" in one_line_error(excinfo)


# ----------------------------------------------------------------------------- union


def test_default_union_ids_labels_and_names(
    default_data: ImageDataset, mnist5k: ImageDataset, animal: ImageDataset, mnist_table
) -> None:
    assert DEFAULT_DATA == "mnist5k+animal-mnist"
    assert_valid(default_data, 15000, 1, 28, 20)
    assert default_data.source_names == ("mnist5k", "animal-mnist")
    assert all(
        name.startswith(f"{default_data.source_names[source]}/")
        for source, name in zip([0] * 10 + [1] * 10, default_data.class_names, strict=True)
    )
    # Each source keeps its fixed id range and its pixels: a union is a concatenation.
    assert torch.equal(default_data.ids, torch.cat([mnist5k.ids, animal.ids]))
    assert torch.equal(default_data.images, torch.cat([mnist5k.images, animal.images]))
    assert torch.equal(default_data.sources, torch.tensor([0] * 5000 + [1] * 10000))
    # Labels point at the right names: an MNIST '7' row and an animal giraffe row.
    row_seven = int(np.flatnonzero(mnist_table[:, -1] == 7)[0])
    assert default_data.class_names[default_data.labels[row_seven]].endswith("/seven")
    giraffe_rows = torch.nonzero(animal.labels == 6).flatten()
    union_labels = default_data.labels[5000 + giraffe_rows]
    assert {default_data.class_names[i] for i in union_labels.tolist()} == {"animal-mnist/giraffe"}
    assert torch.equal(default_data.labels[5000:], animal.labels + 10)


def test_loads_are_deterministic_and_fingerprints_track_content(
    default_data: ImageDataset, mnist5k: ImageDataset, animal: ImageDataset
) -> None:
    again = load_dataset(DEFAULT_DATA)
    assert torch.equal(again.images, default_data.images)
    assert torch.equal(again.ids, default_data.ids)
    assert again.fingerprint == default_data.fingerprint
    small = load_dataset(DEFAULT_DATA, resolution=16, channels=3)
    assert small.fingerprint == default_data.fingerprint
    fingerprints = {default_data.fingerprint, mnist5k.fingerprint, animal.fingerprint}
    fingerprints.add(load_dataset("animal-mnist+mnist5k").fingerprint)
    assert len(fingerprints) == 4


def test_fingerprint_is_stable_across_processes() -> None:
    code = (
        "from hetdiff.data.datasets import load_dataset; print(load_dataset('digits').fingerprint)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == load_dataset("digits").fingerprint


def test_spec_errors_are_one_line() -> None:
    with pytest.raises(HetdiffError) as excinfo:
        load_dataset("mnist5k+cifar10")
    message = one_line_error(excinfo)
    assert "'cifar10'" in message
    assert all(name in message for name in available_datasets())
    assert available_datasets() == ["mnist5k", "animal-mnist", "fashion-mnist", "digits"]
    for bad in ("mnist5k+mnist5k", "", "mnist5k+"):
        with pytest.raises(HetdiffError) as excinfo:
            split_spec(bad)
        one_line_error(excinfo)
    assert split_spec(" mnist5k + imagefolder:/a+b/c+digits") == [
        "mnist5k",
        "imagefolder:/a+b/c",
        "digits",
    ]


@pytest.mark.parametrize("resolution", [0, -3, 2.5, True])
def test_bad_resolution_is_rejected(resolution: object) -> None:
    with pytest.raises(HetdiffError, match="resolution") as excinfo:
        load_dataset("digits", resolution=resolution)  # type: ignore[arg-type]
    one_line_error(excinfo)


def test_bad_channels_is_rejected() -> None:
    with pytest.raises(HetdiffError, match="channels"):
        load_dataset("digits", channels=2)


# ----------------------------------------------------------------------------- resize


@pytest.mark.parametrize("size", [16, 32])
def test_resize_keeps_range_and_content(mnist5k: ImageDataset, size: int) -> None:
    resized = load_dataset("mnist5k", resolution=size)
    assert resized.images.shape == (5000, 1, size, size)
    assert resized.images.min() >= -1.0 and resized.images.max() <= 1.0
    # Area-preserving (antialiased) resampling keeps each image's mean brightness.
    mean_native = mnist5k.images.mean(dim=(1, 2, 3))
    mean_resized = resized.images.mean(dim=(1, 2, 3))
    assert (mean_native - mean_resized).abs().max().item() < 0.05
    # and its coarse layout: 4x4 block means agree.
    coarse_native = torch.nn.functional.adaptive_avg_pool2d(mnist5k.images, 4)
    coarse_resized = torch.nn.functional.adaptive_avg_pool2d(resized.images, 4)
    assert (coarse_native - coarse_resized).abs().mean().item() < 0.03
    assert torch.equal(resized.ids, mnist5k.ids) and resized.fingerprint == mnist5k.fingerprint


def test_three_channels_replicate_gray(mnist5k: ImageDataset) -> None:
    rgb = load_dataset("mnist5k", channels=3)
    assert rgb.images.shape == (5000, 3, 28, 28)
    for channel in range(3):
        assert torch.equal(rgb.images[:, channel : channel + 1], mnist5k.images)


# ----------------------------------------------------------------------------- subset


def test_subset_keeps_the_given_order(default_data: ImageDataset) -> None:
    wanted = [int(default_data.ids[i]) for i in (7000, 3, 14999, 10)]
    for ids in (wanted, torch.tensor(wanted), np.asarray(wanted, dtype=np.int32)):
        part = default_data.subset(ids)
        rows = torch.tensor([7000, 3, 14999, 10])
        assert part.ids.tolist() == wanted
        assert torch.equal(part.images, default_data.images[rows])
        assert torch.equal(part.labels, default_data.labels[rows])
        assert torch.equal(part.sources, default_data.sources[rows])
        assert part.class_names == default_data.class_names
    assert part.fingerprint != default_data.fingerprint
    assert default_data.subset(wanted[:2]).fingerprint != part.fingerprint


def test_subset_errors(default_data: ImageDataset) -> None:
    with pytest.raises(HetdiffError, match="empty") as excinfo:
        default_data.subset([])
    one_line_error(excinfo)
    missing = [5000, 5001, 5002, 5003, 5004, 5005, 5006]  # mnist5k ids end at 4999
    with pytest.raises(HetdiffError) as excinfo:
        default_data.subset([0, *missing])
    message = one_line_error(excinfo)
    assert message.startswith("7 of 8 ids") and "[5000, 5001, 5002, 5003, 5004, ...]" in message
    with pytest.raises(HetdiffError, match="repeat"):
        default_data.subset([1, 2, 1])
    with pytest.raises(HetdiffError, match="integers"):
        default_data.subset(torch.tensor([1.0, 2.0]))


# ----------------------------------------------------------------------------- image folders


def save_gray(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)


@pytest.fixture()
def gray_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """cats/{a,c}.png, cats/b.png corrupt, dogs/d.png; 6x6 except one 6x8 (cropped to 6x6)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    images = {name: rng.integers(0, 256, size=(6, 6)) for name in ("cats/a", "cats/c", "dogs/d")}
    wide = rng.integers(0, 256, size=(6, 8))
    images["dogs/d"] = wide[:, 1:7]  # center crop of the 6x8 file
    save_gray(root / "cats" / "a.png", images["cats/a"])
    save_gray(root / "cats" / "c.png", images["cats/c"])
    save_gray(root / "dogs" / "d.png", wide)
    (root / "cats" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "dogs" / "notes.txt").write_text("ignored")
    return root, images


def test_imagefolder_skips_corrupt_files_with_one_warning(gray_folder) -> None:
    root, images = gray_folder
    with pytest.warns(RuntimeWarning, match=r"skipped 1 unreadable image\(s\).*b\.png"):
        data = load_dataset(f"imagefolder:{root}")
    assert_valid(data, 3, 1, 6, 2)
    assert data.class_names == (f"imagefolder:{root}/cats", f"imagefolder:{root}/dogs")
    assert data.labels.tolist() == [0, 0, 1]
    # ids are positions in the full sorted listing: a.png=0, b.png=1 (corrupt), c.png=2, d.png=3
    assert (data.ids - IMAGEFOLDER_ID_BASE).tolist() == [0, 2, 3]
    for row, name in enumerate(("cats/a", "cats/c", "dogs/d")):
        expected = images[name] / 255.0 * 2 - 1
        np.testing.assert_allclose(data.images[row, 0].numpy(), expected, atol=1e-6)


def test_imagefolder_strict_names_the_bad_file(gray_folder) -> None:
    root, _ = gray_folder
    with pytest.raises(HetdiffError) as excinfo:
        load_dataset(f"imagefolder:{root}", strict=True)
    assert str(root / "cats" / "b.png") in one_line_error(excinfo)


def test_imagefolder_color_mixed_sizes_and_union(tmp_path: Path, gray_folder) -> None:
    root = tmp_path / "colors"
    red = np.zeros((10, 10, 3), dtype=np.uint8)
    red[..., 0] = 200
    (root / "red").mkdir(parents=True)
    Image.fromarray(red, mode="RGB").save(root / "red" / "r.png")
    save_gray(root / "white" / "w.jpg", np.full((20, 20), 255))
    data = load_dataset(f"imagefolder:{root}")
    assert data.images.shape == (2, 3, 10, 10)  # RGB because one file is; smallest side wins
    np.testing.assert_allclose(data.images[0, :, 0, 0], [200 / 255 * 2 - 1, -1, -1], atol=1e-6)
    assert torch.allclose(data.images[1], torch.ones(3, 10, 10), atol=2 / 255)
    gray = load_dataset(f"imagefolder:{root}", channels=1)
    luma = 0.299 * (200 / 255 * 2 - 1) + (0.587 + 0.114) * -1
    assert gray.images[0, 0, 0, 0].item() == pytest.approx(luma, abs=1e-5)
    assert gray.fingerprint == data.fingerprint
    # A union with a built-in: RGB wins, gray digits are replicated, id ranges stay apart.
    pets, _ = gray_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        union = load_dataset(f"digits+imagefolder:{root}+imagefolder:{pets}", resolution=12)
    assert union.images.shape == (1797 + 2 + 3, 3, 12, 12)
    assert union.num_classes == 14 and union.source_names[1] == f"imagefolder:{root}"
    assert torch.unique(union.ids).numel() == len(union)
    assert union.ids[1797].item() == IMAGEFOLDER_ID_BASE
    assert union.ids[1799].item() == 2 * IMAGEFOLDER_ID_BASE


def test_imagefolder_without_images_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    for target in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(HetdiffError) as excinfo:
            load_dataset(f"imagefolder:{target}")
        assert str(target) in one_line_error(excinfo)
