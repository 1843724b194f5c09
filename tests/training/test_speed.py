"""hetdiff.training.speed without compiling anything: the fused AdamW where torch serves it, a
saved optimizer state loaded into the other implementation, in-place compilation keeping the
state dict, and ``compile`` as a setting a resume may toggle. The compiled training run itself:
tests/cli/test_compile_cli.py (slow)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from hetdiff.config import DistillSettings, ExpertSettings
from hetdiff.errors import HetdiffError
from hetdiff.models.dit import DiT, dit_config
from hetdiff.training.expert import train_config_for
from hetdiff.training.loop import TrainConfig
from hetdiff.training.resume import check_resume
from hetdiff.training.speed import (
    compile_mode,
    compile_network,
    fused_adamw_supported,
    load_optimizer_state,
    make_adamw,
)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3))


def _steps(net: torch.nn.Module, optimizer: torch.optim.Optimizer, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(8, 6, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        optimizer.step()


def test_make_adamw_fuses_where_torch_serves_it_and_updates_alike() -> None:
    params = list(_net().parameters())
    assert fused_adamw_supported(params, "cpu") and fused_adamw_supported(params, "cuda")
    assert not fused_adamw_supported(params, "meta")
    fused = make_adamw(params, 1e-2, fused=True)
    assert fused.param_groups[0]["fused"] is True
    assert make_adamw(params, 1e-2, fused=True, device="meta").param_groups[0]["fused"] is None
    plain = make_adamw(params, 1e-2)
    assert plain.param_groups[0]["fused"] is None  # torch's default: what the loop always used
    nets = {}
    for name, is_fused in [("plain", False), ("fused", True)]:
        net = _net()
        optimizer = make_adamw(net.parameters(), 1e-2, (0.9, 0.99), 0.01, fused=is_fused)
        _steps(net, optimizer, 3, seed=1)
        nets[name] = net
    pairs = zip(nets["plain"].parameters(), nets["fused"].parameters(), _net().parameters(),
                strict=True)  # fmt: skip
    for a, b, start in pairs:
        assert not torch.equal(a, start)  # both trained
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("saved_fused,load_fused", [(True, False), (False, True)])
def test_a_saved_state_loads_into_this_runs_implementation(saved_fused, load_fused) -> None:
    net = _net()
    optimizer = make_adamw(net.parameters(), 1e-2, fused=saved_fused)
    _steps(net, optimizer, 2, seed=2)
    saved = copy.deepcopy(optimizer.state_dict())
    resumed = make_adamw(net.parameters(), 1e-2, fused=load_fused)
    load_optimizer_state(resumed, saved)
    assert resumed.param_groups[0]["fused"] is (True if load_fused else None)
    for index, param in enumerate(net.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(resumed.state[param][key].cpu(), saved["state"][index][key])
    plain = make_adamw(net.parameters(), 1e-2, fused=load_fused)
    plain.load_state_dict(saved)  # torch's own load keeps the saved implementation: the reason
    assert plain.param_groups[0]["fused"] is (True if saved_fused else None)
    _steps(net, resumed, 1, seed=3)  # and the loaded optimizer steps


def test_compile_network_keeps_the_module_and_its_state_dict_keys() -> None:
    config = dit_config("tiny", input_size=8, in_channels=1, num_classes=10)
    net = DiT(config)
    keys = list(net.state_dict())
    assert compile_network(net) is net and isinstance(net, DiT)  # compiles at the first call
    assert list(net.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    DiT(config).load_state_dict(net.state_dict(), strict=True)
    assert compile_mode("cpu") == "max-autotune-no-cudagraphs" and compile_mode("cuda") is None


def test_compile_is_a_speed_setting_a_resume_may_toggle(tmp_path: Path) -> None:
    assert ExpertSettings().compile is False and TrainConfig().compile is False
    assert ExpertSettings.from_dict({"compile": True}).compile is True
    with pytest.raises(HetdiffError, match="compile must be true or false"):
        ExpertSettings(compile="yes")
    assert train_config_for(ExpertSettings(compile=True), 100).compile is True
    assert train_config_for(ExpertSettings(), 100).compile is False
    assert train_config_for(DistillSettings(), 100).compile is False  # no such setting there
    eager, compiled = TrainConfig(steps=10), TrainConfig(steps=10, compile=True)
    meta = {"config": eager.to_dict(), "mixed_precision": "no", "world_size": 1,
            "data_fingerprint": "f", "step": 5}  # fmt: skip
    check_resume(meta, compiled.to_dict(), 10, "no", 1, "f", tmp_path)  # accepted
    old = {**meta, "config": {k: v for k, v in eager.to_dict().items() if k != "compile"}}
    check_resume(old, compiled.to_dict(), 10, "no", 1, "f", tmp_path)  # a state from before it
    with pytest.raises(HetdiffError, match="cannot resume: seed"):  # a math setting is refused
        check_resume(meta, TrainConfig(steps=10, compile=True, seed=1).to_dict(), 10, "no", 1,
                     "f", tmp_path)  # fmt: skip
