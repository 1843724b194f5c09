"""The rebuilt (batch-norm-folded, channels-last) InceptionV3 computes the TorchScript network's
function; features of a sample set are cached by content and never computed twice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hetdiff.errors import HetdiffError
from hetdiff.metrics import fid
from hetdiff.metrics.inception import FoldedInception


def test_folded_network_equals_the_torchscript_file_to_float_rounding():
    scripted = torch.jit.load(str(fid.inception_path())).eval()
    folded = FoldedInception(scripted)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 16, 16, generator=gen) * 2 - 1
    x = fid.to_inception_input(images)
    with torch.no_grad():
        reference = scripted(x).reshape(3, -1).double()
        rebuilt = folded(x).double()
    assert rebuilt.shape == (3, 2048)
    rel = float((rebuilt - reference).abs().max() / reference.abs().max())
    assert rel < 1e-5, rel
    # the features do tell the images apart (a folding bug would collapse or scramble them)
    assert float((reference[0] - reference[1]).abs().max()) > 1e3 * rel * float(
        reference.abs().max()
    )
    with pytest.raises(HetdiffError, match=r"expects \(N, 3, 299, 299\)"):
        folded(torch.zeros(1, 1, 299, 299))


def test_sample_features_are_cached_by_content(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 1, 8, 8, generator=gen) * 2 - 1
    first = fid.inception_features(images, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("inception-*.npy"))) == 1

    def no_network(device):  # a cached set must not reach the network again
        raise AssertionError("features were computed twice")

    monkeypatch.setattr(fid, "_load_inception", no_network)
    assert np.array_equal(fid.inception_features(images, cache_dir=tmp_path), first)
    with pytest.raises(AssertionError, match="computed twice"):  # other images: a new entry
        fid.inception_features(images.flip(0), cache_dir=tmp_path)


def test_fused_convolutions_give_the_same_features_at_any_batch():
    """The oneDNN conv + ReLU kernels on packed weights equal the plain modules to float
    rounding (bitwise at 2 threads; at 1 thread oneDNN picks other kernels: 4.5e-7 relative),
    also for a batch size other than the one the weights were packed for."""
    from hetdiff.metrics.inception import FusedConvReLU

    scripted = torch.jit.load(str(fid.inception_path())).eval()
    plain = FoldedInception(scripted, fuse=False)
    fused = FoldedInception(scripted, batch=4)
    count = sum(isinstance(m, FusedConvReLU) for m in fused.modules())
    if not torch.backends.mkldnn.is_available():
        assert count == 0
        return
    assert count == 94  # every convolution of the network
    gen = torch.Generator().manual_seed(2)
    for n in (4, 3):
        x = fid.to_inception_input(torch.rand(n, 1, 16, 16, generator=gen) * 2 - 1)
        with torch.inference_mode():
            got, want = fused(x), plain(x)
            assert (got - want).abs().max() <= 1e-6 * want.abs().max()
