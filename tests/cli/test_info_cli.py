"""``hetdiff info``: the spec of an expert or router checkpoint as JSON, without the weights."""

from __future__ import annotations

import json

import torch

from hetdiff.cli import main
from hetdiff.experts.router_store import RouterSpec, save_router
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import save_expert
from hetdiff.models.router import Router, RouterConfig

MODEL = {"arch": "dit", "name": "tiny", "input_size": 8, "in_channels": 1, "hidden_size": 16}


def test_info_prints_an_expert_spec_with_the_schedule_table_abbreviated(tmp_path, capsys):
    table = {"name": "table", "alphas_cumprod": [0.999, 0.9, 0.5, 0.1]}
    spec = ExpertSpec(
        objective="ddpm", prediction="v", schedule=table, model=MODEL, resolution=8, channels=1,
        cluster_id=1, num_clusters=2, steps=12,
    )  # fmt: skip
    path = tmp_path / "expert.safetensors"
    save_expert(path, {"w": torch.zeros(2)}, spec)
    assert main(["info", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["schedule"]["alphas_cumprod"] == "<4 values>"
    assert (printed["objective"], printed["prediction"], printed["steps"]) == ("ddpm", "v", 12)
    assert printed["model"] == MODEL and printed["cluster_id"] == 1


def test_info_prints_a_router_spec_from_its_folder(tmp_path, capsys):
    config = RouterConfig(3, 8, 1, num_classes=2)
    spec = RouterSpec.for_config(config, "abc123")
    save_router(tmp_path, Router(config).state_dict(), spec)
    assert main(["info", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(spec.to_json())
    assert (printed["num_clusters"], printed["partition_fingerprint"]) == (3, "abc123")


def test_info_on_a_missing_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hetdiff: error: expert checkpoint ") and err.count("\n") == 1
    assert "does not exist" in err
