"""``RunStore`` on a local fsspec URL (no server): ``pull`` never brings a training state (or
submitit's scratch files) into a work folder, whatever prefix it pulls, and ``push`` never
uploads them; the jobs mirror their own state (``training.state_mirror``)."""

from __future__ import annotations

from hetdiff.pipeline.run_store import RunStore


def test_pull_and_push_leave_training_state_to_the_jobs(tmp_path):
    store = tmp_path / "store"
    files = {
        "config.json": "{}",
        "experts/expert-0/log.jsonl": "",
        "experts/expert-0/train_state/latest.json": "{}",
        "experts/expert-0/train_state/step-00000002/state.json": "{}",
        "router/train_state/latest.json": "{}",
        "experts/expert-0/slurm/job.sh": "",
    }
    for key, text in files.items():
        (store / key).parent.mkdir(parents=True, exist_ok=True)
        (store / key).write_text(text)
    island = RunStore(store.as_uri(), work=tmp_path / "island")
    assert island.pull(prefixes=("config.json", "experts/expert-0/"), log=print) == [
        "config.json", "experts/expert-0/log.jsonl"]  # fmt: skip
    run = RunStore(store.as_uri(), work=tmp_path / "work")
    assert run.pull(log=print) == ["config.json", "experts/expert-0/log.jsonl"]
    assert not list((tmp_path / "work").rglob("train_state")) and not list(
        (tmp_path / "work").rglob("slurm"))  # fmt: skip
    state = tmp_path / "work" / "experts" / "expert-1" / "train_state" / "latest.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"step": 4}')
    (tmp_path / "work" / "experts" / "expert-1" / "log.jsonl").write_text("{}\n")
    assert run.push(log=print) == ["experts/expert-1/log.jsonl"]
    assert not (store / "experts" / "expert-1" / "train_state").exists()
