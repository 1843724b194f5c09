"""``hetdiff export-data``, ``features`` and ``split``: features under torchrun, decoded inline,
equal single-process features decoded ahead by threads, for every key; a killed run resumes without recomputing finished
shards; split writes K shard sets whose union is the data set, each key once; ``train-expert``
trains from one cluster's shards; tiny random DINOv2 and CLIP vision folders encode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hetdiff.cli import main
from hetdiff.data.shard_dataset import shard_keys
from hetdiff.data.shard_features import INDEX_FILE

BIN = Path(sys.executable).parent
ENCODER = "efficientnet-lite0@32"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _features(folder: Path) -> dict[str, np.ndarray]:
    rows = {}
    for meta in json.loads((folder / INDEX_FILE).read_text())["shards"]:
        name = Path(meta["shard"]).stem
        keys = (folder / f"{name}.keys.txt").read_text().splitlines()
        rows.update(zip(keys, np.load(folder / f"{name}.npy"), strict=True))
    return rows


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("shards")
    argv = ["export-data", "--data", "digits", "--shards", "8", "--out", str(root / "wds")]
    assert main(argv) == 0
    return root, f"wds:{root / 'wds'}"


def test_features_under_torchrun_equal_single_process(shards) -> None:
    root, spec = shards
    single = root / "single"
    assert (
        main(["features", "--data", spec, "--encoder", ENCODER, "--out", str(single), "--quiet"])
        == 0
    )
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "hetdiff"]
    command += ["features", "--data", spec, "--encoder", ENCODER, "--out", str(root / "two")]
    command += ["--decode-workers", "0"]  # inline decoding, against the default 2 threads
    done = subprocess.run(
        command + ["--quiet"], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 1/2: encoded 4 shard(s)" in done.stdout
    one, two = _features(single), _features(root / "two")
    assert set(one) == set(two) == set(shard_keys(spec)) and len(one) == 1797
    for key, row in one.items():
        assert row.dtype == np.float16 and np.array_equal(row, two[key]), key


def test_killed_run_resumes_without_recomputing(shards, tmp_path) -> None:
    _, spec = shards
    out = tmp_path / "feats"
    command = [sys.executable, "-m", "hetdiff", "features", "--data", spec, "--encoder", ENCODER]
    process = subprocess.Popen(command + ["--out", str(out)], env=_env(), stderr=subprocess.PIPE)
    deadline = 120.0
    import time

    start = time.monotonic()
    while len(list(out.glob("*.json"))) < 3 and time.monotonic() - start < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    finished = sorted(p.name for p in out.glob("0*.json"))
    assert 3 <= len(finished) < 8 and not (out / INDEX_FILE).exists()
    stamps = {name: (out / name).stat().st_mtime_ns for name in finished}
    done = subprocess.run(
        command + ["--out", str(out), "--quiet"], env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"skipped {len(finished)} finished shard(s)" in done.stdout
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == stamps
    assert not list(out.glob(".*.tmp")) and len(_features(out)) == 1797


def test_split_writes_k_shard_sets_covering_each_key_once(shards) -> None:
    root, spec = shards
    features = root / "single"
    if not (features / INDEX_FILE).exists():
        assert (
            main(
                [
                    "features",
                    "--data",
                    spec,
                    "--encoder",
                    ENCODER,
                    "--out",
                    str(features),
                    "--quiet",
                ]
            )
            == 0
        )
    out = root / "split"
    argv = ["split", "--data", spec, "--features", str(features), "--k", "3", "--per-shard", "200"]
    assert main(argv + ["--out", str(out)]) == 0
    record = json.loads((out / "split.json").read_text())
    assert record["encoder"] == ENCODER and record["total"] == 1797 and record["subsample"] == 1797
    source = set(shard_keys(spec))
    seen: list[str] = []
    for cluster in range(3):
        index = json.loads((out / f"cluster-{cluster}" / "index.json").read_text())
        originals = _source_keys(f"wds:{out / f'cluster-{cluster}'}")
        assert len(originals) == index["total"] == record["counts"][cluster] > 0
        seen += originals
    assert sorted(seen) == sorted(source) and len(seen) == len(set(seen))
    # an island trains from its own shards only
    argv = [
        "train-expert",
        "--data",
        f"wds:{out / 'cluster-1'}",
        "--steps",
        "2",
        "--batch-size",
        "8",
    ]
    argv += ["--out", str(root / "expert")]
    assert main(argv + ["--model", "tiny", "--no-progress"]) == 0
    assert (root / "expert" / "expert.safetensors").is_file()


def _source_keys(spec: str) -> list[str]:
    from hetdiff.data.shards import iter_shard, parse_shard_spec

    shard_set = parse_shard_spec(spec)
    return [
        s.meta["source_key"] for shard in shard_set.shards for s in iter_shard(shard_set, shard)
    ]


def test_features_from_another_encoder_are_refused(shards, capsys) -> None:
    root, spec = shards
    features = root / "single"
    if not (features / INDEX_FILE).exists():
        assert (
            main(
                [
                    "features",
                    "--data",
                    spec,
                    "--encoder",
                    ENCODER,
                    "--out",
                    str(features),
                    "--quiet",
                ]
            )
            == 0
        )
    assert (
        main(
            [
                "features",
                "--data",
                spec,
                "--encoder",
                "efficientnet-lite0@48",
                "--out",
                str(features),
            ]
        )
        == 2
    )
    assert f"come from encoder {ENCODER}, not efficientnet-lite0@48" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["dinov2", "clip"])
def test_tiny_random_hf_encoders_extract_features(shards, tmp_path, kind) -> None:
    transformers = pytest.importorskip("transformers")
    _, spec = shards
    if kind == "dinov2":
        config = transformers.Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=8,
        )  # fmt: skip
        model = transformers.Dinov2Model(config)
    else:
        config = transformers.CLIPVisionConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=8, projection_dim=16,
        )  # fmt: skip
        model = transformers.CLIPVisionModel(config)
    model.save_pretrained(tmp_path / "model")
    shard = f"{spec}/00003.tar"
    out = tmp_path / "feats"
    argv = ["features", "--data", shard, "--encoder", f"hf:{tmp_path / 'model'}", "--out", str(out)]
    assert main(argv + ["--quiet"]) == 0
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["encoder"].startswith(f"hf:{config.model_type}@32:") and index["dim"] == 32
    features = np.load(out / "00003.npy")
    assert features.shape == (225, 32) and np.isfinite(features).all()
    assert features.std(axis=0).mean() > 0  # different images, different CLS features


def test_shard_that_disappears_between_runs_is_named(shards, tmp_path, capsys) -> None:
    import shutil

    root, _ = shards
    for name in ("00000.tar", "00001.tar"):
        shutil.copy(root / "wds" / name, tmp_path / name)
    spec = f"wds:{tmp_path}/{{00000..00001}}.tar"
    feats = tmp_path / "feats"
    argv = ["features", "--data", spec, "--encoder", ENCODER, "--out", str(feats), "--quiet"]
    assert main(argv) == 0
    (tmp_path / "00001.tar").unlink()
    argv = ["split", "--data", spec, "--features", str(feats), "--k", "2"]
    assert main(argv + ["--out", str(tmp_path / "split")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "00001.tar cannot be opened" in err
    assert not (tmp_path / "split" / "split.json").exists()


def _ensure_features(root: Path, spec: str) -> Path:
    features = root / "single"
    if not (features / INDEX_FILE).exists():
        argv = ["features", "--data", spec, "--encoder", ENCODER, "--out", str(features)]
        assert main(argv + ["--quiet"]) == 0
    return features


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_killed_split_resumes_skipping_written_shards(shards, tmp_path) -> None:
    root, spec = shards
    features = _ensure_features(root, spec)
    args = ["split", "--data", spec, "--features", str(features), "--k", "3"]
    args += ["--per-shard", "100", "--subsample", "1500"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    command = [sys.executable, "-m", "hetdiff", *args, "--out", str(tmp_path / "split")]
    env = {**_env(), "HETDIFF_TEST_KILL_AT": "split-shard:7"}
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = tmp_path / "split"
    written = sorted(out.glob("cluster-*/*.tar"))
    assert len(written) == 7 and not (out / "split.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in written}
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in written} == stamps  # not written again
    assert _tree(out) == _tree(tmp_path / "straight")  # the same files, byte for byte
    assert not (out / ".split-progress").exists() and not list(out.rglob("*.tmp"))


def test_cli_defaults_come_from_the_config_settings() -> None:
    from hetdiff.cli import build_parser
    from hetdiff.config import ExportSettings, FeatureSettings, SplitSettings, StreamSettings

    parse = build_parser().parse_args
    split = parse(["split", "--data", "wds:x", "--features", "f", "--k", "2", "--out", "o"])
    assert SplitSettings(fine=split.fine, subsample=split.subsample, seed=split.seed,
                         per_shard=split.per_shard) == SplitSettings()  # fmt: skip
    feats = parse(["features", "--data", "wds:x", "--out", "o"])
    assert (feats.encoder, feats.batch_size) == (FeatureSettings().encoder, 64)
    export = parse(["export-data", "--out", "o"])
    assert (export.shards, export.format) == (ExportSettings().shards, ExportSettings().format)
    train = parse(["train-expert", "--out", "o", "--stream"])
    assert train.shuffle_buffer == StreamSettings().shuffle_buffer == 1000
    assert SplitSettings().subsample == 200_000 and SplitSettings().per_shard == 1000


@pytest.mark.slow
def test_hetdiff_run_on_the_shard_path_trains_the_same_experts(tmp_path) -> None:
    """``hetdiff run --quick`` on the built-in ``mnist5k`` and on its export to shards: the same
    partition, and every expert's weights equal (only the data spec in the spec differs). (Not
    ``digits``: its 17 gray levels do not survive the 8-bit PNGs of the shards exactly.)"""
    import torch

    from hetdiff.experts.store import load_expert_state

    assert main(["export-data", "--data", "mnist5k", "--shards", "8", "--out", str(tmp_path)
                 + "/wds"]) == 0  # fmt: skip
    wds = f"wds:{tmp_path / 'wds'}"
    outs = {}
    for name, data in (("memory", "mnist5k"), ("shards", wds)):
        config = tmp_path / f"{name}.toml"
        config.write_text(f'data = "{data}"\nworkers = 1\n')
        outs[name] = tmp_path / name
        done = subprocess.run(
            [str(BIN / "hetdiff"), "run", str(config), "--quick", "--out", str(outs[name])],
            capture_output=True, text=True, env=_env(), timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    parts = [json.loads((outs[n] / "partition.json").read_text()) for n in outs]
    assert parts[0]["sizes"] == parts[1]["sizes"]
    for expert in sorted((outs["memory"] / "experts").glob("expert-*")):
        memory, spec_m = load_expert_state(expert / "expert.safetensors")
        shard, spec_s = load_expert_state(outs["shards"] / "experts" / expert.name /
                                          "expert.safetensors")  # fmt: skip
        assert spec_s.data_spec == wds and spec_m.data_spec == "mnist5k"
        assert memory.keys() == shard.keys()
        for key, value in memory.items():
            assert torch.equal(value, shard[key]), (expert.name, key)
