from __future__ import annotations

import dataclasses
import importlib.util
import pickle
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from hetdiff.errors import HetdiffError
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import (
    SPEC_KEY,
    list_experts,
    load_expert_model,
    load_expert_state,
    read_spec,
    save_expert,
)

_spec_module = importlib.util.spec_from_file_location(
    "hetdiff_tests_expert_spec", Path(__file__).with_name("test_spec.py")
)
_spec_helpers = importlib.util.module_from_spec(_spec_module)
_spec_module.loader.exec_module(_spec_helpers)
ddpm_spec = _spec_helpers.ddpm_spec


def _weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "net.weight": torch.randn(16, 8, generator=generator),
        "net.bias": torch.randn(16, generator=generator).to(torch.bfloat16),
        "steps": torch.tensor(7, dtype=torch.int64),
    }


def test_save_load_round_trip_is_bitwise_and_self_describing(tmp_path):
    path = tmp_path / "expert.safetensors"
    weights, spec = _weights(), ddpm_spec()
    save_expert(path, weights, spec)
    state, loaded_spec = load_expert_state(path)
    assert loaded_spec == spec and read_spec(path) == spec
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    # A plain safetensors file: any safetensors reader sees the spec JSON in the metadata.
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert ExpertSpec.from_json(handle.metadata()[SPEC_KEY]) == spec
    assert [p.name for p in tmp_path.iterdir()] == ["expert.safetensors"]  # no temp files left


@pytest.mark.parametrize("keep", [0.5, 0.99, 8 / 9999])
def test_truncated_checkpoint_is_refused(tmp_path, keep):
    path = tmp_path / "expert.safetensors"
    save_expert(path, _weights(), ddpm_spec())
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(HetdiffError, match="expert.safetensors is truncated or corrupt") as info:
        load_expert_state(path)
    assert "\n" not in str(info.value)
    with pytest.raises(HetdiffError, match="truncated or corrupt"):
        read_spec(path)


def test_flipped_weight_byte_is_refused(tmp_path):
    path = tmp_path / "expert.safetensors"
    save_expert(path, _weights(), ddpm_spec())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes; the header stays valid
    path.write_bytes(bytes(data))
    with pytest.raises(HetdiffError, match="do not match the stored sha256"):
        load_expert_state(path)


def test_missing_foreign_and_pickled_files_are_refused(tmp_path):
    with pytest.raises(HetdiffError, match="nope.safetensors does not exist"):
        load_expert_state(tmp_path / "nope.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(HetdiffError, match="foreign.safetensors has no hetdiff spec metadata"):
        load_expert_state(foreign)
    pickled = tmp_path / "pickled.safetensors"
    pickled.write_bytes(pickle.dumps({"w": torch.zeros(2)}))  # would run code if unpickled
    with pytest.raises(HetdiffError, match="pickled.safetensors is truncated or corrupt"):
        load_expert_state(pickled)
    with pytest.raises(HetdiffError, match="must end in .safetensors"):
        save_expert(tmp_path / "x.pt", _weights(), ddpm_spec())
    bad_spec = tmp_path / "badspec.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(bad_spec), {SPEC_KEY: '{"a": 1}'})
    with pytest.raises(HetdiffError, match=r"badspec.safetensors: unknown expert spec keys"):
        read_spec(bad_spec)


def test_registry_lists_experts_sorted_by_cluster(tmp_path):
    for name, cluster in [("b", 1), ("a", 1), ("z", 0), ("free", None)]:
        save_expert(tmp_path / f"{name}.safetensors", _weights(), ddpm_spec(cluster_id=cluster))
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(tmp_path / "router.safetensors"))
    (tmp_path / "notes.txt").write_text("not an expert")
    listed = list_experts(tmp_path)
    assert [(p.name, s.cluster_id) for p, s in listed] == [
        ("z.safetensors", 0),
        ("a.safetensors", 1),
        ("b.safetensors", 1),
        ("free.safetensors", None),
    ]
    (tmp_path / "a.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(HetdiffError, match="a.safetensors is truncated or corrupt"):
        list_experts(tmp_path)


def test_empty_or_missing_registry_is_an_error(tmp_path):
    with pytest.raises(HetdiffError, match=f"no expert checkpoints .* in {tmp_path}"):
        list_experts(tmp_path)
    with pytest.raises(HetdiffError, match="is not a directory"):
        list_experts(tmp_path / "missing")


def test_load_expert_model_builds_a_dit_with_the_saved_weights(tmp_path):
    dit = pytest.importorskip("hetdiff.models.dit")
    config = dit.DiTConfig(input_size=8, in_channels=1, patch_size=2, hidden_size=16, depth=1,
                           num_heads=2, num_classes=2)  # fmt: skip
    torch.manual_seed(0)
    model = dit.DiT(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))  # leave the zero init behind
    spec = ddpm_spec(model={**config.to_dict(), "arch": "dit", "name": "tiny"},
                     learned_variance=False)  # fmt: skip
    path = tmp_path / "dit.safetensors"
    save_expert(path, model.state_dict(), spec)
    loaded, loaded_spec = load_expert_model(path)
    assert loaded_spec == spec and not loaded.training
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([10.0, 500.0, 990.0]), torch.tensor([0, 1, 0])
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))
    mismatched = dataclasses.replace(spec, learned_variance=True)
    save_expert(tmp_path / "bad.safetensors", model.state_dict(), mismatched)
    with pytest.raises(HetdiffError, match="learned_variance=True disagrees with model"):
        load_expert_model(tmp_path / "bad.safetensors")
    other = dataclasses.replace(spec, model={**spec.model, "arch": "unet"})
    save_expert(tmp_path / "unet.safetensors", model.state_dict(), other)
    with pytest.raises(HetdiffError, match="unknown model arch 'unet'"):
        load_expert_model(tmp_path / "unet.safetensors")
