"""``hetdiff sample --strategy nucleus --top-p P`` and ``hetdiff evaluate --strategies nucleus``
on a tiny registry of three random experts: nucleus at top_p = 1 draws the full ensemble's grid
and at a tiny top_p the top-1 grid, byte for byte; in between it runs a data-dependent number
of experts, which evaluate measures and costs in FLOPs; a top_p outside (0, 1] is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hetdiff.cli import main
from hetdiff.experts.router_store import RouterSpec, save_router
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import save_expert
from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.models.router import Router, RouterConfig

K = 3


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """K random flow DiT experts on digits at 8 px (output layers not zero) and a random
    router of the same partition."""
    root = tmp_path_factory.mktemp("nucleus")
    experts = root / "experts"
    experts.mkdir()
    for k in range(K):
        torch.manual_seed(k)
        config = DiTConfig(input_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=1,
                           num_heads=2)  # fmt: skip
        net = DiT(config)
        for p in net.parameters():
            p.data.normal_(0, 0.1)
        spec = ExpertSpec(objective="flow", prediction="velocity", schedule=None,
                          model={"arch": "dit", **config.to_dict()}, cluster_id=k, num_clusters=K,
                          partition_fingerprint="p", data_spec="digits", resolution=8,
                          channels=1)  # fmt: skip
        save_expert(experts / f"expert-{k}.safetensors", net.state_dict(), spec)
    torch.manual_seed(10)
    config = RouterConfig(K, 8, 1)
    router = Router(config)
    for p in router.parameters():  # spread enough that top_p 0.8 keeps 1, 2 or 3 experts
        p.data.normal_(0, 0.2)
    path = save_router(root / "router.safetensors", router.state_dict(),
                       RouterSpec.for_config(config, "p"))  # fmt: skip
    return experts, path


def sample_grid(registry, out, *flags) -> np.ndarray:
    experts, router = registry
    argv = ["sample", "--experts", str(experts), "--router", str(router), "--n", "4",
            "--steps", "3", "--out", str(out), *flags]  # fmt: skip
    assert main(argv) == 0
    return np.asarray(Image.open(out))


def test_sample_accepts_nucleus_and_its_limits_are_full_and_top1(registry, tmp_path, capsys):
    grid = sample_grid(registry, tmp_path / "n.png", "--strategy", "nucleus", "--top-p", "0.8")
    full = sample_grid(registry, tmp_path / "f.png", "--strategy", "full")
    top1 = sample_grid(registry, tmp_path / "t.png", "--strategy", "top1")
    one = sample_grid(registry, tmp_path / "n1.png", "--strategy", "nucleus", "--top-p", "1")
    tiny = sample_grid(registry, tmp_path / "n0.png", "--strategy", "nucleus", "--top-p", "1e-6")
    assert grid.std() > 0 and not np.array_equal(full, top1)
    assert np.array_equal(one, full) and np.array_equal(tiny, top1)
    assert not np.array_equal(grid, full) and not np.array_equal(grid, top1)
    experts, router = registry
    for bad in ("0", "1.5"):
        argv = ["sample", "--experts", str(experts), "--router", str(router), "--strategy",
                "nucleus", "--top-p", bad, "--out", str(tmp_path / "bad.png")]  # fmt: skip
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hetdiff: error: nucleus needs top_p in (0, 1]"), err
        assert "\n" not in err and not (tmp_path / "bad.png").exists()


def test_evaluate_measures_what_nucleus_runs_and_costs_it(registry, tmp_path):
    experts, router = registry
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--experts", str(experts), "--router", str(router), "--strategies",
            "nucleus", "top1", "full", "--top-p", "0.8", "--n", "8", "--steps", "3",
            "--solver", "euler", "--no-fid", "--no-judge", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads(out.read_text())
    kept = metrics["strategies"]["nucleus"]["experts_per_forward"]
    assert 1 < kept < K  # data dependent: more than top1, fewer than full on this router
    assert "experts_per_forward" not in metrics["strategies"]["top1"]
    flops = metrics["flops_per_sample"]
    per_forward = metrics["flops_per_forward"]
    # equal-sized experts: router + kept x expert per evaluation, 3 Euler evaluations
    expected = 3 * (per_forward["router"] + kept * per_forward["experts"][0])
    assert per_forward["experts"] == [per_forward["experts"][0]] * K
    assert flops["nucleus"] == pytest.approx(expected, rel=1e-12)
    assert flops["top1"] < flops["nucleus"] < flops["full"]


@pytest.mark.slow  # torch.compile of 3 tiny DiTs and the router: about 40 s at 1 thread (cold)
def test_sample_compile_draws_the_eager_grid(registry, tmp_path):
    """``--compile`` compiles the networks (torch builds graphs) and draws the default's grid:
    pixels equal up to one level of 255 where float rounding moves a value across a step."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    eager = sample_grid(registry, tmp_path / "e.png", "--strategy", "top1")
    assert counters["stats"]["unique_graphs"] == graphs  # the default compiles nothing
    compiled = sample_grid(registry, tmp_path / "c.png", "--strategy", "top1", "--compile")
    assert counters["stats"]["unique_graphs"] > graphs
    assert eager.std() > 0
    assert np.abs(compiled.astype(int) - eager.astype(int)).max() <= 1
