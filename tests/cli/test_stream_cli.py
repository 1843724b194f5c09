"""``train-expert --stream``: an expert trained from shards read as a stream, SIGKILLed at each
point of the checkpoint protocol (``$HETDIFF_TEST_KILL_AT``), resumes at the same sample and
ends with a checkpoint and training state bitwise equal to an uninterrupted run's (the run
crosses an epoch boundary of the stream); a text expert trains from the shards' captions."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from helpers import run_hetdiff as hetdiff
from hetdiff.cli import main
from hetdiff.experts.store import load_expert_state
from hetdiff.training import state as state_io

# 36 steps x 64 = 2304 samples > 1797 digits: the stream starts its second epoch after step 28
STREAM = ["train-expert", "--stream", "--shuffle-buffer", "200", "--resolution", "8",
          "--steps", "36", "--checkpoint-every", "12", "--batch-size", "64",
          "--mixed-precision", "no", "--no-progress"]  # fmt: skip
KILLS = [("after-artifact", 36), ("before-artifact", 24)]  # resume from 24 and from 12


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("stream-shards")
    assert main(["export-data", "--data", "digits", "--shards", "8", "--out", str(root)]) == 0
    return f"wds:{root}"


@pytest.fixture(scope="module")
def baseline(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stream-baseline")
    result = hetdiff([*STREAM, "--data", shards, "--out", str(out)])
    assert result.returncode == 0, result.stderr
    return out


def _same_state(expected: Path, actual: Path) -> None:
    want = state_io.load_train_state(expected / "train_state")
    got = state_io.load_train_state(actual / "train_state")
    assert want.step == got.step == 36
    for part in ("model", "ema", "rng"):
        for key, value in getattr(want, part).items():
            assert torch.equal(getattr(got, part)[key], value), f"{part}.{key}"
    _, want_opt = state_io.flatten_tree(want.optimizer)
    _, got_opt = state_io.flatten_tree(got.optimizer)
    assert all(torch.equal(want_opt[k], got_opt[k]) for k in want_opt)
    assert want.meta["stream"] == got.meta["stream"] and want.meta["stream"]["epoch"] == 1
    assert want.meta["last_loss"] == got.meta["last_loss"]


@pytest.mark.parametrize(("point", "step"), KILLS)
def test_streamed_expert_killed_resumes_bitwise(shards, baseline, tmp_path, point, step) -> None:
    out = tmp_path / "e"
    killed = hetdiff([*STREAM, "--data", shards, "--out", str(out)], kill=f"{point}:{step}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    saved = state_io.load_train_state(out / "train_state").meta["stream"]  # the position
    assert saved["epoch"] == 0 and saved["offset"] > 0 and len(saved["buffer"]) == 200
    resumed = hetdiff([*STREAM, "--data", shards, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "expert.safetensors").read_bytes() == (
        baseline / "expert.safetensors"
    ).read_bytes()
    _same_state(baseline, out)
    assert not list(out.rglob("*.tmp"))


def test_resume_with_another_shuffle_buffer_is_refused(shards, tmp_path) -> None:
    out = tmp_path / "e"
    args = [*STREAM, "--data", shards, "--out", str(out)]
    assert hetdiff(args, kill="after-state:12").returncode == -signal.SIGKILL
    changed = [*args, "--resume", "--shuffle-buffer", "100"]
    result = hetdiff(changed)
    assert result.returncode == 2 and "training data differs" in result.stderr
    assert result.stderr.count("\n") == 1


def test_text_expert_trains_from_the_shards_captions(shards, tmp_path) -> None:
    out = tmp_path / "text"
    args = [*STREAM, "--data", shards, "--out", str(out), "--text-encoder", "hash"]
    args[args.index("--steps") + 1] = "4"
    result = hetdiff(args)
    assert result.returncode == 0, result.stderr
    spec = load_expert_state(out / "expert.safetensors")[1]
    assert spec.text_encoder == "hash" and spec.num_classes == 0
    assert spec.data_spec == shards


def test_stream_refusals_are_one_line(shards, tmp_path, capsys) -> None:
    base = [*STREAM, "--out", str(tmp_path / "x")]
    assert main([*base, "--data", "digits"]) == 2
    assert "--stream reads shards" in capsys.readouterr().err
    assert main([*base, "--data", shards, "--autoencoder", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--stream does not take --autoencoder" in err and err.count("\n") == 1


def test_spec_records_the_stream(baseline) -> None:
    weights, spec = load_expert_state(baseline / "expert.safetensors")
    assert spec.num_classes == 10 and spec.resolution == 8 and spec.channels == 1
    record = json.loads((baseline / "train_config.json").read_text())
    assert record["batch_size"] == 64 and weights
