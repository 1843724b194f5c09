"""Experts and ensembles load from a store URL: a verified local copy, the same numbers as the
local files; a checkpoint whose bytes changed in the store is refused in one line."""

from __future__ import annotations

import pytest
import torch

import hetdiff
from expert_files import probe_batch, write_ddpm_expert
from hetdiff.errors import HetdiffError
from hetdiff.experts.artifact_store import is_url, local_copy


def test_an_expert_loads_from_a_file_url_like_from_its_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HETDIFF_CACHE_DIR", str(tmp_path / "cache"))
    path = write_ddpm_expert(tmp_path / "store" / "experts" / "expert-0" / "expert.safetensors")
    x, t, labels = probe_batch()
    reference = hetdiff.load_expert(path)
    for url in (f"file://{path}", f"file://{path.parent}"):
        assert is_url(url) and not is_url(path)
        expert = hetdiff.load_expert(url)
        assert expert.spec == reference.spec
        torch.testing.assert_close(expert(x, t, labels), reference(x, t, labels))
    copied = local_copy(f"file://{tmp_path / 'store' / 'experts'}")
    assert sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*.safetensors")) == [
        "expert-0/expert.safetensors"
    ]


def test_a_checkpoint_changed_in_the_store_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HETDIFF_CACHE_DIR", str(tmp_path / "cache"))
    path = write_ddpm_expert(tmp_path / "store" / "expert.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one byte of tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(HetdiffError) as err:
        hetdiff.load_expert(f"file://{path}")
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HetdiffError, match="no .safetensors checkpoint under"):
        hetdiff.load_expert(f"file://{tmp_path / 'empty'}")
