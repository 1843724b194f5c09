"""The training state mirrored to a store: a job whose folder is gone resumes from the store and
ends bitwise like one never stopped; a store manifest whose files are missing or changed is
refused naming the URL; the newest committed step wins; a failed upload only warns."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
import torch

from hetdiff.config import ExpertSettings
from hetdiff.errors import HetdiffError
from hetdiff.experts.artifact_store import ArtifactStore
from hetdiff.training import state as state_io
from hetdiff.training.jobs import ExpertJob, run_expert_job
from hetdiff.training.loop import train
from hetdiff.training.state_mirror import LOCK_NAME, pull_state, push_state


def _states_equal(root_a, root_b) -> None:
    """Bitwise equality of two committed states (as tests/training/test_loop.py checks)."""
    a, b = state_io.load_train_state(root_a), state_io.load_train_state(root_b)
    assert a.step == b.step
    for part in ("model", "ema", "rng"):
        da, db = getattr(a, part), getattr(b, part)
        assert da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da), part
    skel_a, ta = state_io.flatten_tree(a.optimizer)
    skel_b, tb = state_io.flatten_tree(b.optimizer)
    assert skel_a == skel_b and ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    drop = ("elapsed_s",)
    assert {k: v for k, v in a.meta.items() if k not in drop} == {
        k: v for k, v in b.meta.items() if k not in drop
    }


def _keys(url: str) -> list[str]:
    return sorted(ArtifactStore(url).versions(""))


def _memory_url() -> str:
    return f"memory://mirror-{uuid.uuid4().hex}/train_state"  # one process-wide fs: unique


def _toy_train(toy, out, steps: int, state_url: str | None = None, resume: bool = False):
    images, labels = toy.toy_data()
    config = toy.base_config(steps=steps, checkpoint_every=2)
    return train(toy.make_model(), images, labels, toy.flow_loss, config, out, resume=resume,
                 state_url=state_url)  # fmt: skip


def test_a_job_resumes_from_the_store_and_ends_bitwise_like_an_uninterrupted_one(tmp_path, capsys):
    url = (tmp_path / "store" / "expert-0" / "train_state").as_uri()  # file://...
    settings = dict(objective="flow", steps=4, batch_size=8, checkpoint_every=2, seed=5,
                    progress=False, mixed_precision="no")  # fmt: skip

    def job(out: str, steps: int, state_url: str | None) -> ExpertJob:
        s = ExpertSettings(**{**settings, "steps": steps})
        return ExpertJob(data="digits", out=str(tmp_path / out), settings=s, resolution=8,
                         state_url=state_url)  # fmt: skip

    run_expert_job(job("full", 4, None))  # never stopped, never mirrored
    assert not (tmp_path / "store").exists()
    run_expert_job(job("part", 2, url))  # preempted after its checkpoint of step 2
    assert set(_keys(url)) == {"latest.json"} | {
        f"step-00000002/{n}"
        for n in (
            "model.safetensors",
            "ema.safetensors",
            "optimizer.safetensors",
            "state.json",
            "rng-rank0.safetensors",
        )  # fmt: skip
    }
    shutil.rmtree(tmp_path / "part")  # restarted on a node without its work folder
    capsys.readouterr()
    path = run_expert_job(job("part", 4, url))  # job.resume False: decided from the store
    out = capsys.readouterr().out
    assert f"training state of step 2 pulled from {url}" in out
    _states_equal(tmp_path / "full" / "train_state", tmp_path / "part" / "train_state")
    assert path.read_bytes() == (tmp_path / "full" / "expert.safetensors").read_bytes()
    # the store now holds step 4 only (step 2 deleted after the new commit), byte for byte
    assert {k.split("/")[0] for k in _keys(url)} == {"latest.json", "step-00000004"}
    local = tmp_path / "part" / "train_state"
    assert ArtifactStore(url).get_bytes("latest.json") == (local / "latest.json").read_bytes()
    assert not (tmp_path / "full" / "train_state" / LOCK_NAME).exists()  # local: no store at all


def test_a_store_manifest_without_its_files_is_refused_and_nothing_is_installed(toy, tmp_path):
    url = _memory_url()
    _toy_train(toy, tmp_path / "a", steps=2, state_url=url)
    store = ArtifactStore(url)
    store.fs.rm(store.path("step-00000002/optimizer.safetensors"))
    fresh = tmp_path / "b" / "train_state"
    with pytest.raises(HetdiffError) as info:
        pull_state(fresh, url)
    message = str(info.value)
    assert "\n" not in message and url in message and "optimizer.safetensors" in message
    assert message.startswith(f"cannot resume from the training state at {url}: ")
    assert state_io.read_manifest(fresh) is None
    assert sorted(p.name for p in fresh.iterdir()) == [LOCK_NAME]  # no step folder, no staging
    # a file whose bytes changed in the store is refused by its hash, the same way
    push_state(tmp_path / "a" / "train_state", url)  # uploads the missing file again
    data = bytearray(store.get_bytes("step-00000002/model.safetensors"))
    data[-3] ^= 0x01
    store.put_bytes("step-00000002/model.safetensors", bytes(data))
    with pytest.raises(HetdiffError, match="truncated or changed"):
        pull_state(fresh, url)
    assert state_io.read_manifest(fresh) is None and not list(fresh.glob("step-*"))
    # a manifest (digest recomputed) naming paths outside its step folder is refused unread
    manifest = json.loads(store.get_bytes("latest.json"))
    manifest["files"] = {"../../escaped.safetensors": manifest["files"]["model.safetensors"]}
    manifest["digest"] = state_io.manifest_digest(manifest)
    store.put_bytes("latest.json", json.dumps(manifest).encode())
    with pytest.raises(HetdiffError, match="manifest names unexpected paths"):
        pull_state(fresh, url)
    assert not list(tmp_path.rglob("escaped.safetensors"))


def test_the_newest_committed_step_wins_either_way(toy, tmp_path):
    url = _memory_url()
    _toy_train(toy, tmp_path / "old", steps=2, state_url=url)
    _toy_train(toy, tmp_path / "new", steps=4)  # a later state, never uploaded
    # the local state is newer: kept, and the store catches up with it
    assert pull_state(tmp_path / "new" / "train_state", url) is True
    assert state_io.read_manifest(tmp_path / "new" / "train_state")["step"] == 4
    assert {k.split("/")[0] for k in _keys(url)} == {"latest.json", "step-00000004"}
    # the store is newer: installed over the older local state, which is removed
    assert pull_state(tmp_path / "old" / "train_state", url) is True
    _states_equal(tmp_path / "old" / "train_state", tmp_path / "new" / "train_state")
    assert [p.name for p in (tmp_path / "old" / "train_state").glob("step-*")] == ["step-00000004"]
    # nothing anywhere: nothing is created
    assert pull_state(tmp_path / "none" / "train_state", _memory_url()) is False
    assert not (tmp_path / "none").exists()
    # a resumed loop with state_url continues from the pulled state, bitwise
    _toy_train(toy, tmp_path / "old", steps=6, state_url=url, resume=True)
    _toy_train(toy, tmp_path / "ref", steps=6)
    _states_equal(tmp_path / "old" / "train_state", tmp_path / "ref" / "train_state")


def test_a_failed_upload_warns_in_one_line_and_training_goes_on(toy, tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file where the store's folder should be")
    url = (tmp_path / "blocker" / "train_state").as_uri()
    result = _toy_train(toy, tmp_path / "run", steps=4, state_url=url)
    assert result.steps == 4
    assert state_io.read_manifest(tmp_path / "run" / "train_state")["step"] == 4
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 2, warnings  # one per checkpoint (steps 2 and 4), each one line
    for step, line in zip((2, 4), warnings, strict=True):
        assert line.startswith(f"hetdiff: warning: cannot upload the training state of step "
                               f"{step} to {url} (")  # fmt: skip
        assert line.endswith("training goes on, the next checkpoint retries")
