"""The loop across real processes: SIGKILL + resume is bitwise exact; 2-rank DDP stays in sync;
2 ranks on a stream decode half a batch each and train bitwise as 2 ranks on the tensors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import safetensors.torch
import torch

from hetdiff.training import state as state_io

TOY = Path(__file__).with_name("toy_run.py")
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _start(args: list[str], cwd: Path, torchrun: bool = False) -> subprocess.Popen:
    if torchrun:
        command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(TOY)]
    else:
        command = [sys.executable, str(TOY)]
    return subprocess.Popen(
        command + args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr[-3000:]


def _load(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


@contextlib.contextmanager
def _single_thread():
    """The subprocess's thread count, so in-process and subprocess math agree bitwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_sigkilled_run_resumes_to_bitwise_identical_state(toy, tmp_path):
    # A subprocess SIGKILLs itself inside the loss of step 10 (mid-step); its last committed
    # state is step 8. Meanwhile this process runs the same 12 steps uninterrupted.
    killed = _start(["--out", "k", "--dump", "k", "--kill-at-step", "10"], tmp_path)
    images, labels = toy.toy_data()
    with _single_thread():
        straight = toy.train(toy.make_model(), images, labels, toy.flow_loss,
                             toy.base_config(steps=12), tmp_path / "straight")  # fmt: skip
    code, stderr = _finish(killed)
    assert code == -signal.SIGKILL, stderr
    assert state_io.read_manifest(tmp_path / "k" / "train_state")["step"] == 8
    assert not (tmp_path / "k-rank0.safetensors").exists()  # it never finished
    with _single_thread():  # resume from what the killed process left on disk
        resumed = toy.train(toy.make_model(seed=5), images, labels, toy.flow_loss,
                            toy.base_config(steps=12), tmp_path / "k", resume=True)  # fmt: skip

    # Model, EMA, every AdamW moment, the RNG states and the data position: bitwise.
    expected = state_io.load_train_state(tmp_path / "straight" / "train_state")
    actual = state_io.load_train_state(tmp_path / "k" / "train_state")
    assert expected.step == actual.step == 12
    for part in ("model", "ema", "rng"):
        want, got = getattr(expected, part), getattr(actual, part)
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(want[key], got[key]), f"{part}.{key}"
    want_skeleton, want_opt = state_io.flatten_tree(expected.optimizer)
    got_skeleton, got_opt = state_io.flatten_tree(actual.optimizer)
    assert want_skeleton == got_skeleton and want_opt.keys() == got_opt.keys()
    for key in want_opt:
        assert torch.equal(want_opt[key], got_opt[key]), key
    for key in ("epoch", "position", "ema_num_updates", "scheduler", "last_loss"):
        assert expected.meta[key] == actual.meta[key], key
    for key, value in straight.ema_state.items():
        assert torch.equal(resumed.ema_state[key], value), key
    log = [json.loads(line) for line in (tmp_path / "k" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))  # step 9's line was dropped, redone
    straight_log = straight.log_path.read_text().splitlines()
    assert [r["loss"] for r in log] == [json.loads(line)["loss"] for line in straight_log]


def test_two_process_ddp_ranks_hold_identical_weights(toy, tmp_path):
    code, stderr = _finish(
        _start(["--out", "ddp", "--dump", "ddp", "--steps", "6"], tmp_path, True)
    )
    assert code == 0, stderr
    rank0, rank1 = (
        _load(tmp_path / "ddp-rank0.safetensors"),
        _load(tmp_path / "ddp-rank1.safetensors"),
    )
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    initial = {f"model.{k}": v for k, v in toy.make_model().state_dict().items()}
    assert any(not torch.equal(rank0[k], v) for k, v in initial.items())  # it did train
    manifest = state_io.read_manifest(tmp_path / "ddp" / "train_state")
    assert manifest["world_size"] == 2 and manifest["step"] == 6
    assert {"rng-rank0.safetensors", "rng-rank1.safetensors"} <= set(manifest["files"])
    noise0 = state_io.load_train_state(tmp_path / "ddp" / "train_state", rank=0).rng["noise"]
    noise1 = state_io.load_train_state(tmp_path / "ddp" / "train_state", rank=1).rng["noise"]
    assert not torch.equal(noise0, noise1)  # each rank draws its own noise
    steps = [json.loads(line)["step"] for line in (tmp_path / "ddp" / "log.jsonl").open()]
    assert steps == list(range(1, 7))  # one writer: the main process


def test_two_ranks_on_a_stream_decode_half_each_and_train_as_on_tensors(tmp_path):
    """The stream yields the in-memory loop's order, so both runs take the same rows on each
    rank: the weights must be equal bitwise, while each rank decoded only its rows."""
    streamed = _start(["--out", "s", "--dump", "s", "--steps", "5", "--stream"], tmp_path, True)
    tensors = _start(["--out", "t", "--dump", "t", "--steps", "5"], tmp_path, True)
    for process in (streamed, tensors):
        code, stderr = _finish(process)
        assert code == 0, stderr
    for rank in (0, 1):
        on_stream = _load(tmp_path / f"s-rank{rank}.safetensors")
        on_tensors = _load(tmp_path / f"t-rank{rank}.safetensors")
        decoded = on_stream.pop("decoded")
        assert decoded.numel() == 5 * 16 // 2  # half of every global batch of 16
        assert on_stream.keys() == on_tensors.keys()
        for key in on_tensors:
            assert torch.equal(on_stream[key], on_tensors[key]), (rank, key)
    rank0 = set(_load(tmp_path / "s-rank0.safetensors")["decoded"].tolist()[:8])
    rank1 = set(_load(tmp_path / "s-rank1.safetensors")["decoded"].tolist()[:8])
    assert not rank0 & rank1 and len(rank0 | rank1) == 16  # step 1: the 16 rows, split
