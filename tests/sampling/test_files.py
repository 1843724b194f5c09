"""Sample sets round-trip bit-exactly; bad files and shapes are one-line errors."""

from __future__ import annotations

import pytest
import torch

from hetdiff.errors import HetdiffError
from hetdiff.sampling.files import SampleSet, load_samples, save_samples


def test_samples_round_trip_with_and_without_labels(tmp_path):
    images = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, -1, 2, 2])
    for name, given in (("a", labels), ("b", None)):
        path = save_samples(tmp_path / "sub" / f"{name}.safetensors", SampleSet(images, given))
        back = load_samples(path)
        assert back.images.equal(images)
        assert (back.labels is None) if given is None else back.labels.equal(given)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "a.safetensors",
        "b.safetensors",
    ]


def test_bad_sample_sets_are_one_line_errors(tmp_path):
    with pytest.raises(HetdiffError, match="no samples at"):
        load_samples(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HetdiffError, match="unreadable"):
        load_samples(tmp_path / "junk.safetensors")
    with pytest.raises(HetdiffError, match=r"\(N, C, H, W\)"):
        SampleSet(torch.zeros(3, 4, 4))
    with pytest.raises(HetdiffError, match="labels must be"):
        SampleSet(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.long))


def test_expert_usage_round_trips_and_is_absent_unless_given(tmp_path):
    images = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    usage = torch.tensor([1.0, 0.375, 0.125], dtype=torch.float64)
    back = load_samples(save_samples(tmp_path / "n.safetensors", SampleSet(images, None, usage)))
    assert back.expert_usage.dtype == torch.float64 and back.expert_usage.equal(usage)
    plain = load_samples(save_samples(tmp_path / "p.safetensors", SampleSet(images)))
    assert plain.expert_usage is None
