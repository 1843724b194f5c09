"""hetdiff.train_expert / cluster / run / read_*: the same library entries as the commands, so
the same files; bad settings refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hetdiff
from hetdiff.cli import main
from hetdiff.experts.store import load_expert_state


def test_train_expert_writes_what_the_command_writes(tmp_path):
    settings = {"objective": "ddpm", "prediction": "v", "steps": 10, "batch_size": 16}
    api = hetdiff.train_expert("digits", tmp_path / "api", {**settings, "progress": False})
    flags = "--objective ddpm --prediction v --steps 10 --batch-size 16 --no-progress".split()
    assert main(["train-expert", "--data", "digits", *flags, "--out", str(tmp_path / "cli")]) == 0
    api_state, api_spec = load_expert_state(api)
    cli_state, cli_spec = load_expert_state(tmp_path / "cli" / "expert.safetensors")
    assert api_spec == cli_spec and api_spec.schedule["name"] == "linear"
    for name, tensor in api_state.items():
        torch.testing.assert_close(tensor, cli_state[name], rtol=0, atol=0)
    log = hetdiff.read_log(tmp_path / "api")
    assert [row["step"] for row in log] == [10] and np.isfinite(log[0]["loss"])


def test_cluster_in_memory_equals_the_written_manifest(tmp_path):
    kwargs = {"features": "pixels", "fine": 8, "seed": 3, "progress": False}
    kept = hetdiff.cluster("digits", 2, **kwargs)
    written = hetdiff.cluster("digits", 2, tmp_path / "partition.json", **kwargs)
    assert kept.fingerprint == written.fingerprint and sum(kept.sizes) == 1797
    np.testing.assert_array_equal(kept.clusters, written.clusters)
    assert (tmp_path / "partition.montage.png").is_file()


def test_settings_typos_are_refused_with_the_nearest_key(tmp_path):
    with pytest.raises(hetdiff.HetdiffError, match="did you mean 'steps'"):
        hetdiff.train_expert("digits", tmp_path / "e", {"stpes": 10})
    with pytest.raises(hetdiff.HetdiffError, match="settings must be ExpertSettings"):
        hetdiff.train_expert("digits", tmp_path / "e", hetdiff.RouterSettings())
    assert not (tmp_path / "e").exists()


def test_run_validates_the_whole_config_before_touching_the_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(hetdiff.HetdiffError, match="cluster.k = 3 but 4 experts"):
        hetdiff.run({"cluster": {"k": 3}}, out)
    with pytest.raises(hetdiff.HetdiffError, match="unknown strategy 'top2'"):
        hetdiff.run({"sample": {"strategies": ["top2"]}}, out, preset="quick")
    with pytest.raises(hetdiff.HetdiffError, match="preset applies to a config file"):
        hetdiff.run(hetdiff.RunConfig(), out, preset="quick")
    assert not out.exists()
    with pytest.raises(hetdiff.HetdiffError, match="run the pipeline into"):
        hetdiff.read_metrics(out)
