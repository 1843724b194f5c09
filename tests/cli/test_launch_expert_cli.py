"""``hetdiff launch-expert RUN --expert K``: one expert of a run trained on its own, into a run
folder (the S3 and island flow: tests/pipeline/test_run_store.py)."""

from __future__ import annotations

import json

from cluster_runs import finish, hetdiff, toy_config
from hetdiff.experts.store import read_spec


def test_launch_expert_trains_only_its_expert_and_refuses_bad_input(tmp_path):
    run, config = tmp_path / "run", str(toy_config(tmp_path, steps1=24))
    proc = hetdiff("launch-expert", str(run), "--expert", "0")
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and log.strip().splitlines()[-1] == (
        f"hetdiff: error: {run} holds no hetdiff run (no config.json); pass a run folder"
    ), log
    assert not run.exists()
    proc = hetdiff("launch-expert", str(run), "--expert", "2", "--config", config)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, log
    assert "hetdiff: error: --expert 2: the run has 2 experts, 0 to 1" in log

    log = finish(hetdiff("launch-expert", str(run), "--expert", "1", "--config", config))
    ckpt = run / "experts" / "expert-1" / "expert.safetensors"
    assert f"expert 1: {ckpt}" in log and "submitted to the local launcher" in log
    assert read_spec(ckpt).cluster_id == 1 and read_spec(ckpt).steps == 24
    assert not (run / "experts" / "expert-0").exists()
    assert json.loads((run / "stages" / "cluster.json").read_text())["key"]
    record = json.loads((run / "experts" / "expert-1" / "launch.json").read_text())
    assert record["launcher"] == "local" and record["state"] == "COMPLETED"
    again = finish(hetdiff("launch-expert", str(run), "--expert", "1"))
    assert "expert 1: finished before, kept" in again and "submitted" not in again
