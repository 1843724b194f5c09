from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from hetdiff.errors import HetdiffError
from hetdiff.training import state as state_io


def _adamw_after_steps() -> tuple[torch.optim.AdamW, LambdaLR]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    scheduler = LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 5))
    for _ in range(3):
        model(torch.randn(2, 4)).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def _assert_tree_equal(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_tree_equal(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_tree_equal(x, y)
    else:
        assert a == b


def test_flatten_round_trips_adamw_and_scheduler_state():
    optimizer, scheduler = _adamw_after_steps()
    for tree in (optimizer.state_dict(), scheduler.state_dict()):
        skeleton, tensors = state_io.flatten_tree(tree, "x")
        skeleton = json.loads(json.dumps(skeleton))  # must survive JSON
        _assert_tree_equal(state_io.unflatten_tree(skeleton, tensors), tree)
    # Integer parameter ids and the betas tuple keep their types.
    back = state_io.unflatten_tree(*state_io.flatten_tree(optimizer.state_dict()))
    assert set(back["state"]) == {0, 1}
    assert back["param_groups"][0]["betas"] == (0.8, 0.95)


def test_flatten_refuses_unknown_leaves():
    with pytest.raises(HetdiffError, match="cannot store a object"):
        state_io.flatten_tree({"a": object()})


def _write_state(root: Path, step: int, world_size: int = 1) -> None:
    optimizer, _ = _adamw_after_steps()
    directory = state_io.prepare_step_dir(root, step)
    weights = {"w": torch.arange(6.0).view(2, 3)}
    state_io.write_shared_state(
        directory, model=weights, ema=weights, optimizer=optimizer.state_dict(), meta={"step": step}
    )
    for rank in range(world_size):
        state_io.write_rank_state(directory, rank, {"torch_cpu": torch.get_rng_state()})
    state_io.commit(root, step, world_size)


def test_commit_load_round_trip_and_cleanup(tmp_path):
    _write_state(tmp_path, 4)
    _write_state(tmp_path, 8)
    # A directory from a save that was killed before its commit: never picked up.
    stray = state_io.prepare_step_dir(tmp_path, 12)
    (stray / "model.safetensors").write_bytes(b"half")
    loaded = state_io.load_train_state(tmp_path, rank=0)
    assert loaded.step == 8 and loaded.meta["step"] == 8
    assert torch.equal(loaded.model["w"], torch.arange(6.0).view(2, 3))
    optimizer, _ = _adamw_after_steps()
    _assert_tree_equal(loaded.optimizer, optimizer.state_dict())
    assert not (tmp_path / "step-00000004").exists()  # older states are removed on commit


def test_truncated_or_missing_state_files_are_refused(tmp_path):
    _write_state(tmp_path, 4)
    path = tmp_path / "step-00000004" / "optimizer.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(HetdiffError, match="optimizer.safetensors is truncated or changed"):
        state_io.load_train_state(tmp_path)
    path.unlink()
    with pytest.raises(HetdiffError, match="optimizer.safetensors is missing"):
        state_io.load_train_state(tmp_path)


def test_rank_without_saved_rng_is_refused(tmp_path):
    _write_state(tmp_path, 4, world_size=1)
    with pytest.raises(HetdiffError, match="saved by 1 processes"):
        state_io.load_train_state(tmp_path, rank=1)
    with pytest.raises(HetdiffError, match="no training state"):
        state_io.load_train_state(tmp_path / "empty")
