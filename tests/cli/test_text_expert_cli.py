"""A caption-conditioned expert on the command line: ``sample --expert`` with prompts, and the
one-line refusals when prompts and a model's conditioning disagree (moved from
tests/models/test_text.py)."""

from __future__ import annotations

import pytest

from hetdiff.cli import main
from hetdiff.config import ExpertSettings
from hetdiff.data.datasets import load_dataset
from hetdiff.errors import HetdiffError
from hetdiff.experts.store import load_expert_model
from hetdiff.models.text import check_same_text_encoder
from hetdiff.training.expert import train_expert


def test_text_expert_trains_samples_prompts_and_refuses_mismatches(tmp_path, capsys) -> None:
    data = load_dataset("digits")
    data = data.subset(data.ids[::9])
    fast = dict(steps=4, batch_size=8, checkpoint_every=4, progress=False, mixed_precision="no")
    settings = ExpertSettings(model="tiny", text_encoder="hash", **fast)
    text_ckpt = train_expert(data, settings, tmp_path / "text", cache_dir=tmp_path / "cache")
    net, spec = load_expert_model(text_ckpt)
    assert spec.text_encoder == "hash" and spec.num_classes == 0
    assert net.config.context_dim == 32 and spec.model["context_dim"] == 32

    grid = tmp_path / "grid.png"
    argv = ["sample", "--expert", str(text_ckpt), "--n", "2", "--steps", "2", "--out", str(grid)]
    assert main([*argv, "--prompt", "a digit one", "--prompt", "a digit two", "--cfg", "2"]) == 0
    assert grid.is_file() and "row 1: 'a digit two'" in capsys.readouterr().out
    for extra, message in (
        ([], "pass --prompt"),
        (["--class", "3"], "use --prompt"),
        (["--prompt", " "], "empty"),
    ):
        assert main([*argv, *extra]) == 2
        assert message in capsys.readouterr().err

    class_ckpt = train_expert(data, ExpertSettings(model="tiny", **fast), tmp_path / "cls")
    argv[2] = str(class_ckpt)
    assert main([*argv, "--prompt", "a digit one"]) == 2
    err = capsys.readouterr().err
    assert "class-conditional (not trained on captions)" in err and err.count("\n") == 1

    _, class_spec = load_expert_model(class_ckpt)
    with pytest.raises(HetdiffError, match="different text encoders"):
        check_same_text_encoder([spec, class_spec])
    assert check_same_text_encoder([spec, spec]) == "hash"
