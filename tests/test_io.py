"""Atomic writes: a reader sees the old file or the whole new one, never a part, and no
temporary file survives; the cache root follows $HETDIFF_CACHE_DIR."""

import json
import os
from pathlib import Path

import pytest

from hetdiff.io import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    default_cache_dir,
)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HETDIFF_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("HETDIFF_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "hetdiff"


def test_atomic_path_shows_the_old_file_until_the_new_one_is_whole(tmp_path):
    target = tmp_path / "a" / "b" / "artifact.bin"  # parents are created
    atomic_write_bytes(target, b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent  # same folder: os.replace is atomic
        assert tmp.name.startswith(".artifact.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new, half")
        assert target.read_bytes() == b"old"  # a reader now still sees the old file
        tmp.write_bytes(b"new, whole")
    assert target.read_bytes() == b"new, whole"
    assert sorted(p.name for p in target.parent.iterdir()) == ["artifact.bin"]


def test_an_exception_inside_leaves_the_target_untouched_and_no_temp(tmp_path):
    target = tmp_path / "artifact.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact.txt"]

    fresh = tmp_path / "never.txt"
    with pytest.raises(ValueError):
        with atomic_path(fresh) as tmp:
            tmp.write_text("partial")
            raise ValueError
    assert not fresh.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["artifact.txt"]


def test_files_get_ordinary_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_text_and_json_writers(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "grüße\n")
    assert (tmp_path / "t.txt").read_bytes() == "grüße\n".encode()
    atomic_write_text(tmp_path / "t.txt", "replaced")
    assert (tmp_path / "t.txt").read_text() == "replaced"

    atomic_write_json(tmp_path / "m.json", {"b": [1, 2], "a": {"c": 1.5}})
    text = (tmp_path / "m.json").read_text()
    assert text == '{\n  "a": {\n    "c": 1.5\n  },\n  "b": [\n    1,\n    2\n  ]\n}\n'
    assert json.loads(text) == {"a": {"c": 1.5}, "b": [1, 2]}
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["m.json", "t.txt"]
