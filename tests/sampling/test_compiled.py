"""Compiled sampling (``hetdiff.sampling.compiled``, ``SampleSettings.compile``): a loaded
ensemble of three tiny DiT experts and a class router, compiled in place, draws the eager images
to float rounding with the top-1 and full strategies; the row counts top-1 hands each expert
do not recompile at every step (the compiling tests are slow: see below)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import hetdiff
from hetdiff.conditioning import Conditioning
from hetdiff.config import SampleSettings
from hetdiff.errors import HetdiffError
from hetdiff.experts.router_store import RouterSpec, save_router
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import save_expert
from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.models.router import Router, RouterConfig
from hetdiff.sampling.compiled import compile_for_sampling, is_compiled, sampling_networks
from hetdiff.sampling.generate import generate

K = 3
CONFIG = DiTConfig(input_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=1,
                   num_heads=2, num_classes=10)  # fmt: skip


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """K random flow DiT experts (8 px, 10 classes, output layers not zero) and a random class
    router whose choice depends on the label, so top-1 splits a batch unevenly."""
    root = tmp_path_factory.mktemp("compiled")
    (root / "experts").mkdir()
    for k in range(K):
        torch.manual_seed(k)
        net = DiT(CONFIG)
        for p in net.parameters():
            p.data.normal_(0, 0.1)
        spec = ExpertSpec(objective="flow", prediction="velocity", schedule=None,
                          model={"arch": "dit", **CONFIG.to_dict()}, cluster_id=k, num_clusters=K,
                          partition_fingerprint="p", data_spec="digits", resolution=8,
                          channels=1, num_classes=10)  # fmt: skip
        save_expert(root / "experts" / f"expert-{k}.safetensors", net.state_dict(), spec)
    torch.manual_seed(10)
    config = RouterConfig(K, 8, 1, hidden=8, depth=1, num_classes=10)
    router = Router(config)
    for p in router.parameters():
        p.data.normal_(0, 0.3)
    router.head.bias.data.zero_()
    router.prior_head.bias.data.zero_()
    for p in router.label_embed.parameters():  # the label decides: batches split unevenly
        p.data.mul_(10)
    save_router(
        root / "router.safetensors", router.state_dict(), RouterSpec.for_config(config, "p")
    )
    return root / "experts", root / "router.safetensors"


def _rows_per_call(ensemble) -> dict[int, list[int]]:
    """Record the rows each expert is called on (a hook on its adapter, outside the compile)."""
    rows: dict[int, list[int]] = {}
    for j, expert in enumerate(ensemble.experts):
        expert.register_forward_pre_hook(lambda _, args, j=j: rows.setdefault(j, []).append(
            args[0].shape[0]))  # fmt: skip
    return rows


def _images(model, seeds, labels) -> torch.Tensor:
    return generate(model, (1, 8, 8), seeds, 3, "euler", labels, 3.0)


# torch.compile on CPU: about 5 s with inductor's cache warm (/tmp/torchinductor_$USER), about
# 50 s cold at 1 thread (and 20 s for the next test), so both wait for `make test-slow`
@pytest.mark.slow
def test_compiled_ensemble_samples_the_eager_images(registry):
    experts, router = registry
    seeds, labels = list(range(8)), torch.arange(8) % 10
    for strategy in ("top1", "full"):
        eager = hetdiff.load_ensemble(experts, router, strategy=strategy)
        compiled = hetdiff.load_ensemble(experts, router, strategy=strategy, compile=True)
        networks = list(sampling_networks(compiled))
        assert len(networks) == K + 1 and all(is_compiled(n) for n in networks)
        assert not any(is_compiled(n) for n in sampling_networks(eager))
        assert type(networks[0]) is Router and all(type(n) is DiT for n in networks[1:])
        # in place: the plain modules and state-dict keys (no "_orig_mod." prefix)
        assert compiled.state_dict().keys() == eager.state_dict().keys()
        rows = _rows_per_call(compiled)
        reference, images = _images(eager, seeds, labels), _images(compiled, seeds, labels)
        assert reference.abs().max() > 0.5
        assert (images - reference).abs().max() < 1e-5  # observed about 1e-6
        counts = {n for calls in rows.values() for n in calls}
        if strategy == "top1":  # the batch of 16 (CFG rows) split unevenly: new row counts
            assert len(counts - {16}) >= 2
        else:
            assert counts == {16}


@pytest.mark.slow
def test_a_compiled_expert_compiles_for_a_few_row_counts_then_reuses_them():
    """torch compiles for the first row count, once more with the count symbolic, once for a
    single row; later counts (top-1 hands each expert a new one at every step, a last batch is
    smaller) reuse those, whether the labels come as a ``Conditioning`` (from an ensemble) or as
    a tensor (one expert), which the network wraps inside the compiled code."""
    torch.manual_seed(0)
    net = compile_for_sampling(hetdiff.velocity_expert(DiT(CONFIG))).net
    for wrap in (Conditioning, lambda labels: labels):
        graphs = []
        with torch.no_grad():
            for n in (6, 5, 1, 3, 7, 11, 2, 1, 16):
                net(torch.randn(n, 1, 8, 8), torch.rand(n) * 1000, wrap(torch.arange(n) % 10))
                graphs.append(counters["stats"]["unique_graphs"])
        assert graphs[3:] == [graphs[2]] * 6, graphs


def test_compile_for_sampling_is_in_place_and_once():
    torch.manual_seed(0)
    expert = hetdiff.velocity_expert(DiT(CONFIG))
    net = expert.net
    assert compile_for_sampling(expert) is expert and expert.net is net and is_compiled(net)
    compiled_call = net._compiled_call_impl
    compile_for_sampling(expert)  # a second call keeps the first compilation
    assert net._compiled_call_impl is compiled_call
    assert list(sampling_networks(net)) == [net]  # a bare network is its own network


def test_compile_is_an_opt_in_setting():
    assert SampleSettings().compile is False
    assert SampleSettings(compile=True).compile is True
    with pytest.raises(HetdiffError, match="compile must be true or false"):
        SampleSettings(compile="yes")
