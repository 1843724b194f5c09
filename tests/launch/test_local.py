"""The local launcher behind the launcher interface, and an expert that fails for good: the run
names it; with ``--allow-missing`` it samples from the K - 1 experts present and says which
cluster is missing. (No daemons: these run in the default suite.)"""

from __future__ import annotations

import json

from cluster_runs import finish, hetdiff, toy_config


def test_an_expert_that_fails_for_good_is_named_and_allow_missing_goes_on_without_it(tmp_path):
    out, config = tmp_path / "run", str(toy_config(tmp_path, steps1=24))
    # a folder where expert 1's training log must go: its job fails on every attempt
    (out / "experts" / "expert-1" / "log.jsonl").mkdir(parents=True)
    (out / "config.json").parent.mkdir(exist_ok=True)
    from hetdiff.config import load_config

    (out / "config.json").write_text(json.dumps(load_config(config).to_dict()))
    proc = hetdiff("run", config, "--out", str(out))
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2, log
    error = log.strip().splitlines()[-1]
    assert error.startswith("hetdiff: error: expert 1: ") and "log.jsonl" in error, error
    assert "--allow-missing" in error and "expert 0" not in error
    assert json.loads((out / "experts/expert-1/launch.json").read_text())["state"] == "FAILED"

    log = finish(hetdiff("run", config, "--out", str(out), "--allow-missing"))
    assert "expert 0: finished before, kept" in log
    assert "missing: the ensemble goes on without cluster 1" in log
    assert (out / "samples" / "expert-0.png").is_file() and "sampled 8 images with top1" in log
    marker = json.loads((out / "stages" / "experts.json").read_text())
    assert marker["missing"] == [1]
    assert (out / "samples" / "top1.png").is_file() and not (out / "samples/expert-1.png").exists()
    report = (out / "report.html").read_text()
    assert "Missing: the expert of cluster 1" in report
    status = finish(hetdiff("status", str(out))).splitlines()
    assert status[0].startswith("expert-0  local") and "COMPLETED" in status[0]
    assert status[1].startswith("expert-1  local") and "FAILED" in status[1]
