"""The pipeline end to end at toy size (digits, 8 px): resume after a kill, isolation of experts,
and refusals before any work starts."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from hetdiff.cli import main
from hetdiff.config import load_config
from hetdiff.errors import HetdiffError
from hetdiff.pipeline import Run

TOY = """
data = "digits"
resolution = 8
workers = 1
[cluster]
k = 2
fine = 8
features = "pixels"
[[experts]]
objective = "ddpm"
prediction = "eps"
schedule = "cosine"
steps = {steps0}
batch_size = 32
[[experts]]
objective = "flow"
steps = {steps1}
batch_size = 32
[router]
steps = 20
batch_size = 32
[sample]
n = 8
steps = 4
strategies = ["top1", "full"]
[evaluate]
n = 8
fid = false
"""


def toy_config(tmp_path, steps0=30, steps1=400):
    path = tmp_path / "toy.toml"
    path.write_text(TOY.format(steps0=steps0, steps1=steps1))
    return path


def run_cli(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hetdiff", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env, **kwargs,
    )  # fmt: skip


def test_killed_run_resumes_without_retraining_finished_experts(tmp_path):
    config, out = toy_config(tmp_path), tmp_path / "run"
    proc = run_cli(["run", str(config), "--out", str(out)])
    first = out / "experts" / "expert-0" / "expert.safetensors"
    second_state = out / "experts" / "expert-1" / "train_state" / "latest.json"
    deadline = time.time() + 240
    while not second_state.exists():  # expert 0 is done and expert 1 has a checkpoint
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "expert 1 never reached its first checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns
    assert not (out / "report.html").exists()

    result = run_cli(["run", str(config), "--out", str(out)])
    log, _ = result.communicate(timeout=600)
    assert result.returncode == 0, log
    assert "stage cluster: done before, skipped" in log
    assert "expert 0: finished before, kept" in log
    assert "expert 1: resuming from its last checkpoint" in log
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["strategies"]) == {"top1", "full"}
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 5  # 2 strategies, 2 experts, clusters
    # a third run does nothing at all
    again = run_cli(["run", str(config), "--out", str(out)])
    log, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and log.count("done before, skipped") == 6


def _train(out, cluster, partition):
    return run_cli(
        ["train-expert", "--data", "digits", "--objective", "flow", "--steps", "25",
         "--batch-size", "16", "--partition", str(partition), "--cluster", str(cluster),
         "--out", str(out), "--no-progress"]
    )  # fmt: skip


def test_each_expert_depends_only_on_its_own_shard(tmp_path):
    """Expert 0 trained beside expert 1 on shard B, and again beside expert 1 on a changed shard
    B': expert 0's weights are bitwise identical; expert 1's differ."""
    from hetdiff.data.datasets import load_dataset
    from hetdiff.data.partition import random_partition

    data = load_dataset("digits")
    base = random_partition(data, 3, seed=0)
    base.save(str(tmp_path / "p1.json"))
    # p2 moves images between clusters 1 and 2 only: cluster 0's shard is unchanged
    clusters = base.clusters.copy()
    ones, twos = (clusters == 1).nonzero()[0], (clusters == 2).nonzero()[0]
    clusters[ones[:50]], clusters[twos[:50]] = 2, 1
    changed = dataclasses.replace(base, clusters=clusters)
    changed.save(str(tmp_path / "p2.json"))
    runs = {}
    for name in ("p1", "p2"):
        procs = [_train(tmp_path / name / f"e{c}", c, tmp_path / f"{name}.json") for c in (0, 1)]
        for proc in procs:
            log, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, log
        runs[name] = [load_file(tmp_path / name / f"e{c}" / "expert.safetensors") for c in (0, 1)]
    w0_a, w0_b = runs["p1"][0], runs["p2"][0]
    assert all(w0_a[k].equal(w0_b[k]) for k in w0_a)
    w1_a, w1_b = runs["p1"][1], runs["p2"][1]
    assert not all(w1_a[k].equal(w1_b[k]) for k in w1_a)


def test_an_output_folder_of_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**load_config().to_dict(), "seed": 7}))
    with pytest.raises(HetdiffError, match="holds another run .*seed"):
        Run(load_config(), out).execute()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(HetdiffError, match="not empty"):
        Run(load_config(), other).execute()
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster]\nk = 3\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hetdiff: error: cluster.k = 3 but 4 experts") and "\n" not in err
    assert not (tmp_path / "x").exists()
