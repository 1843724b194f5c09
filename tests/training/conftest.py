"""Loads the toy model / data / loss shared by the training tests (tests/training/toy_run.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

TOY_PATH = Path(__file__).with_name("toy_run.py")


def _load_toy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hetdiff_tests_toy_run", TOY_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def toy() -> ModuleType:
    return _load_toy()
