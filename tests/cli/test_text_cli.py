"""Text-conditioned ensembles on the command line: ``train-router --text-encoder`` and
``sample --experts`` with prompts, and the one-line refusals when prompts and models disagree."""

from __future__ import annotations

import json

import pytest

from hetdiff.cli import main
from hetdiff.config import ExpertSettings
from hetdiff.data.datasets import load_dataset
from hetdiff.data.partition import random_partition
from hetdiff.experts.router_store import read_router_spec
from hetdiff.training.expert import train_expert

FAST = dict(steps=4, batch_size=8, checkpoint_every=4, progress=False, mixed_precision="no")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """digits split in 2 random clusters; 2 text experts, 2 class experts (4 steps each)."""
    root = tmp_path_factory.mktemp("text-cli")
    mp = pytest.MonkeyPatch()
    mp.setenv("HETDIFF_CACHE_DIR", str(root / "cache"))
    data = load_dataset("digits")
    partition = random_partition(data, 2, seed=0)
    partition.save(str(root / "partition.json"))
    for kind, text in (("text", "hash"), ("class", None)):
        for k in range(2):
            train_expert(
                data.subset(partition.ids_of(k)),
                ExpertSettings(model="tiny", text_encoder=text, seed=k, **FAST),
                root / kind / f"expert-{k}",
                cluster_id=k,
                num_clusters=2,
                partition_fingerprint=partition.fingerprint,
            )
    yield root
    mp.undo()


def train_router_cli(root, out, *extra):
    argv = ["train-router", "--data", "digits", "--partition", str(root / "partition.json")]
    argv += ["--steps", "10", "--batch-size", "32", "--no-progress", "--out", str(out), *extra]
    return main(argv)


def test_text_router_from_the_cli_samples_prompts_with_text_experts(registry, tmp_path, capsys):
    router = tmp_path / "router"
    assert train_router_cli(registry, router, "--text-encoder", "hash") == 0
    printed = capsys.readouterr().out
    assert "router accuracy per t bucket" in printed and '"text_encoder": "hash"' in printed
    spec = read_router_spec(router)
    assert (spec.conditioning, spec.text_encoder, spec.model["context_dim"]) == ("text", "hash", 32)

    grid = tmp_path / "grid.png"
    argv = ["sample", "--experts", str(registry / "text"), "--router", str(router), "--n", "2"]
    argv += ["--steps", "2", "--out", str(grid)]
    prompts = ["--prompt", "a handwritten digit three", "--prompt", "a handwritten digit one"]
    assert main([*argv, *prompts, "--cfg", "2", "--strategy", "top1"]) == 0
    assert grid.is_file() and "row 1: 'a handwritten digit one'" in capsys.readouterr().out

    metrics_path = tmp_path / "metrics.json"
    evaluate = ["evaluate", "--experts", str(registry / "text"), "--router", str(router)]
    evaluate += ["--partition", str(registry / "partition.json"), "--n", "16", "--steps", "2"]
    assert (
        main(
            [
                *evaluate,
                "--strategies",
                "top1",
                "--no-fid",
                "--no-judge",
                "--out",
                str(metrics_path),
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_path.read_text())  # 16 captions of 10 classes: a class repeats
    assert "intra_class_diversity" in metrics["strategies"]["top1"]
    assert len(metrics["router_by_t"]) == 10 and metrics["flops_per_forward"]["router"] > 0

    empty = tmp_path / "prompts.txt"
    empty.write_text("# nothing here\n\n")
    for extra, message in (
        ([], "pass --prompt TEXT"),
        (["--class", "3"], "use --prompt TEXT instead"),
        (["--prompts", str(empty)], "no prompts given"),
        (["--prompt", " "], "a prompt is empty"),
    ):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err

    # the same text router with class experts, and prompts to a class ensemble
    assert main([*argv[:2], str(registry / "class"), *argv[3:], "--prompt", "a digit"]) == 2
    err = capsys.readouterr().err
    assert "the router is conditioned on text (hash, router/router.safetensors)" in err
    assert err.count("\n") == 1
    class_router = tmp_path / "class-router"
    assert train_router_cli(registry, class_router) == 0
    class_argv = ["sample", "--experts", str(registry / "class"), "--router", str(class_router)]
    class_argv += argv[5:]
    assert main([*class_argv, "--prompt", "a digit"]) == 2
    assert "class-conditional (not trained on captions)" in capsys.readouterr().err
    assert main([*argv[:4], str(class_router), *argv[5:], "--prompt", "a digit"]) == 2
    assert "retrain the router with --text-encoder hash" in capsys.readouterr().err


def test_train_router_text_flags_are_checked_first(registry, tmp_path, capsys):
    assert (
        train_router_cli(registry, tmp_path / "r", "--text-encoder", "hash", "--unconditional") == 2
    )
    assert "exclude each other" in capsys.readouterr().err
    assert train_router_cli(registry, tmp_path / "r", "--text-encoder", str(tmp_path)) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
