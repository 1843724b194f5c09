"""Every byte of a checkpoint is verified: a flipped byte anywhere (header length, header JSON,
spec, tensor data) of an expert, a router or a training state is refused in one line; unsigned
files are refused unless trusted; old (tensor-only digest) experts still load; identical content
gives identical bytes in two processes; permissions follow the umask; a crafted spec is refused
before anything is allocated."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from hetdiff.errors import HetdiffError
from hetdiff.experts import signed
from hetdiff.experts.router_store import RouterSpec, load_router, read_router_spec, save_router
from hetdiff.experts.store import (
    HASH_KEY,
    SPEC_KEY,
    load_expert_model,
    load_expert_state,
    read_spec,
    save_expert,
)
from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.models.router import Router, RouterConfig
from hetdiff.training import state as state_io

CONFIG = DiTConfig(input_size=4, in_channels=1, patch_size=2, hidden_size=8, depth=1,
                   num_heads=2, num_classes=0)  # fmt: skip


def _spec_dict(**model_overrides) -> dict:
    model = {"arch": "dit", "name": "t", **CONFIG.to_dict(), **model_overrides}
    return dict(objective="ddpm", prediction="eps", schedule={"name": "linear"}, model=model,
                resolution=model["input_size"], channels=1, steps=3)  # fmt: skip


def _expert(path: Path) -> Path:
    from hetdiff.experts.spec import ExpertSpec

    torch.manual_seed(0)
    save_expert(path, DiT(CONFIG).state_dict(), ExpertSpec(**_spec_dict()))
    return path


def _router(path: Path) -> Path:
    config = RouterConfig(2, 8, 1, hidden=8, depth=1)
    torch.manual_seed(0)
    return save_router(path, Router(config).state_dict(), RouterSpec.for_config(config, "f00d"))


def _flip_positions(data: bytes) -> list[int]:
    """Every byte of the 8-byte length and the header JSON, and 40 spread over the tensors."""
    header_end = 8 + int.from_bytes(data[:8], "little")
    step = max(1, (len(data) - header_end) // 40)
    return [*range(header_end), *range(header_end, len(data), step)]


def _assert_every_flip_refused(path: Path, load) -> int:
    original = path.read_bytes()
    positions = _flip_positions(original)
    for position in positions:
        for mask in (0x01, 0xFF):  # a bit flip ('4' -> '5', ' ' -> '!') and a byte inversion
            data = bytearray(original)
            data[position] ^= mask
            path.write_bytes(bytes(data))
            with pytest.raises(HetdiffError) as refused:
                load(path)
            assert "\n" not in str(refused.value), (position, mask)
    path.write_bytes(original)
    load(path)  # the intact file loads
    return len(positions)


def test_a_flipped_byte_anywhere_in_an_expert_is_refused(tmp_path):
    path = _expert(tmp_path / "expert.safetensors")
    tested = _assert_every_flip_refused(path, load_expert_model)
    assert tested > 500
    _assert_every_flip_refused(path, read_spec)  # `info` reads the spec: verified too


def test_a_flipped_byte_anywhere_in_a_router_is_refused(tmp_path):
    path = _router(tmp_path / "router.safetensors")
    _assert_every_flip_refused(path, load_router)
    _assert_every_flip_refused(path, read_router_spec)


def test_a_flipped_byte_anywhere_in_a_training_state_is_refused(tmp_path):
    root = tmp_path / "train_state"
    directory = state_io.prepare_step_dir(root, 4)
    model = {"w": torch.randn(3, 2), "b": torch.zeros(2)}
    state_io.write_shared_state(directory, model=model, ema=model,
                                optimizer={"state": {}, "param_groups": [{"lr": 0.1}]},
                                meta={"step": 4, "config": {"lr": 0.1}})  # fmt: skip
    state_io.write_rank_state(directory, 0, {"noise": torch.zeros(4, dtype=torch.uint8)})
    state_io.commit(root, 4, 1)
    files = [root / "latest.json", *sorted(directory.iterdir())]
    for path in files:
        original = path.read_bytes()
        for position in range(0, len(original), max(1, len(original) // 300)):
            data = bytearray(original)
            data[position] ^= 0x01
            path.write_bytes(bytes(data))
            with pytest.raises(HetdiffError) as refused:
                state_io.load_train_state(root)
            assert "\n" not in str(refused.value), (path.name, position)
        path.write_bytes(original)
    assert state_io.load_train_state(root).step == 4


def test_unsigned_files_are_refused_unless_trusted_and_old_digests_still_load(tmp_path):
    weights = DiT(CONFIG).state_dict()
    spec_json = json.dumps(_spec_dict())
    tensors = {k: v.contiguous() for k, v in weights.items()}
    unsigned = tmp_path / "unsigned.safetensors"
    safetensors.torch.save_file(tensors, str(unsigned), {"format": "pt", SPEC_KEY: spec_json})
    with pytest.raises(HetdiffError, match="carries no digest.*--trust-unsigned") as refused:
        load_expert_state(unsigned)
    assert "\n" not in str(refused.value)
    with pytest.raises(HetdiffError, match="carries no digest"):
        read_spec(unsigned)
    assert load_expert_state(unsigned, trust_unsigned=True)[1].steps == 3
    # written before the digest: hetdiff_sha256 over the tensors only, verified with that meaning
    legacy = tmp_path / "legacy.safetensors"
    metadata = {"format": "pt", SPEC_KEY: spec_json, HASH_KEY: signed.tensors_digest(tensors)}
    safetensors.torch.save_file(tensors, str(legacy), metadata)
    state, spec = load_expert_state(legacy)
    assert spec.steps == 3 and all(torch.equal(state[k], tensors[k]) for k in tensors)
    bad = dict(tensors, **{"x_embedder.proj.bias": tensors["x_embedder.proj.bias"] + 1})
    safetensors.torch.save_file(bad, str(legacy), metadata)
    with pytest.raises(HetdiffError, match="do not match the stored sha256"):
        load_expert_state(legacy)


_WRITE_BOTH = """
import sys, torch
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import save_expert
from hetdiff.experts.router_store import RouterSpec, save_router
from hetdiff.models.router import RouterConfig
spec = ExpertSpec(**{spec!r})
state = {{"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}}
save_expert(sys.argv[1] + "/expert.safetensors", state, spec)
config = RouterConfig(2, 8, 1, hidden=8, depth=1)
torch.manual_seed(0)
from hetdiff.models.router import Router
save_router(sys.argv[1], Router(config).state_dict(), RouterSpec.for_config(config, "f00d"))
"""


def test_identical_content_gives_byte_identical_files_in_two_processes(tmp_path):
    script = _WRITE_BOTH.format(spec=_spec_dict())
    digests = []
    for run in ("one", "two"):
        (tmp_path / run).mkdir()
        subprocess.run([sys.executable, "-c", script, str(tmp_path / run)], check=True)
        digests.append(
            {
                name: hashlib.sha256((tmp_path / run / name).read_bytes()).hexdigest()
                for name in ("expert.safetensors", "router.safetensors")
            }  # fmt: skip
        )
    assert digests[0] == digests[1]
    header = (tmp_path / "one" / "expert.safetensors").read_bytes()
    length = int.from_bytes(header[:8], "little")
    keys = list(json.loads(header[8 : 8 + length])["__metadata__"])
    assert keys == sorted(keys) == ["format", signed.DIGEST_KEY, SPEC_KEY]


def test_checkpoint_permissions_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        expert = _expert(tmp_path / "a" / "expert.safetensors")
        router = _router(tmp_path / "a")
        os.umask(0o027)
        grouped = _expert(tmp_path / "b" / "expert.safetensors")
    finally:
        os.umask(previous)
    assert expert.stat().st_mode & 0o777 == 0o644
    assert router.stat().st_mode & 0o777 == 0o644
    assert grouped.stat().st_mode & 0o777 == 0o640


def _signed_expert(path: Path, spec: dict, tensors: dict | None = None) -> Path:
    tensors = DiT(CONFIG).state_dict() if tensors is None else tensors
    signed.write_signed(path, tensors, {"format": "pt", SPEC_KEY: json.dumps(spec)})
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"schedule": {"name": "linear", "num_train_timesteps": "abc"}}, "num_train_timesteps"),
        ({"schedule": {"name": "table", "alphas_cumprod": ["x"]}}, "alphas_cumprod"),
        ({"schedule": {"name": "linear", "num_train_timesteps": 10**12}}, "num_train_timesteps"),
        ({"resolution": 10**9}, "resolution"),
        ({"model": {**_spec_dict()["model"], "hidden_size": 10**12}}, "hidden_size"),
        ({"model": {**_spec_dict()["model"], "depth": 10**9}}, "depth"),
        # within every bound, but not the file's tensors: refused from the header's shapes,
        # before a (multi-GB) network is allocated
        (
            {
                "model": {
                    **_spec_dict()["model"],
                    "hidden_size": 65536,
                    "depth": 64,
                    "input_size": 4096,
                },
                "resolution": 4096,
            },
            "weights do not fit",
        ),  # fmt: skip
    ],
)
def test_a_crafted_spec_is_refused_before_allocation(tmp_path, change, match):
    path = _signed_expert(tmp_path / "x.safetensors", {**_spec_dict(), **change})
    with pytest.raises(HetdiffError, match=match) as refused:
        load_expert_model(path)
    assert "\n" not in str(refused.value)


def test_a_crafted_router_spec_is_refused_before_allocation(tmp_path):
    path = _router(tmp_path / "r.safetensors")
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    spec = json.loads(metadata["router_spec"])
    spec["model"]["hidden"] = 65536  # in bounds; the shapes in the header say otherwise
    metadata["router_spec"] = json.dumps(spec)
    signed.write_signed(path, tensors, metadata)
    with pytest.raises(HetdiffError, match="router weights do not match its spec"):
        load_router(path)
    spec["model"]["depth"] = 10**9
    metadata["router_spec"] = json.dumps(spec)
    signed.write_signed(path, tensors, metadata)
    with pytest.raises(HetdiffError, match="depth must be an integer"):
        load_router(path)
