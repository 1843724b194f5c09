"""Hub interop on the command line: an imported diffusers DDPM UNet2DModel and two hetdiff flow
experts sample as one ensemble (`sample --experts` with a `train-router` router); `export`
writes the tree that `sample` reads back; bad input is one line naming the file and field."""

from __future__ import annotations

import json

import numpy as np
import pytest
from diffusers import DDPMScheduler
from PIL import Image

from diffusers_models import save_folder, tiny_unet
from hetdiff.cli import main
from hetdiff.experts.store import list_experts
from hetdiff.sampling.ensemble import load_ensemble
from hub_run import build_hub_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-cli")
    mp = pytest.MonkeyPatch()
    mp.setenv("HETDIFF_CACHE_DIR", str(root / "cache"))
    yield build_hub_run(root)
    mp.undo()


def test_heterogeneous_ensemble_with_an_imported_unet_samples(run, tmp_path, capsys):
    specs = [spec for _, spec in list_experts(run / "experts")]
    assert [(s.cluster_id, s.objective, s.model["arch"]) for s in specs] == [
        (0, "flow", "dit"), (1, "flow", "dit"), (2, "ddpm", "diffusers")
    ]  # fmt: skip
    assert specs[2].num_clusters == 3 and specs[2].partition_fingerprint
    grids = {}
    for strategy in ("full", "top1"):
        out = tmp_path / f"{strategy}.png"
        argv = ["sample", "--experts", str(run / "experts"), "--router", str(run / "router"),
                "--strategy", strategy, "--n", "4", "--steps", "6", "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        grids[strategy] = np.asarray(Image.open(out))
    # the imported DDPM expert (cosine schedule) sets the range the ensemble samples on
    ensemble = load_ensemble(run / "experts", run / "router")
    assert ensemble.t_range == ensemble.experts[2].t_range and ensemble.t_range[1] < 1
    assert f"t in [{ensemble.t_range[0]:.4f}, " in capsys.readouterr().out
    assert grids["full"].std() > 0 and not np.array_equal(grids["full"], grids["top1"])


def test_export_and_sample_the_tree(run, tmp_path, capsys):
    tree = tmp_path / "tree"
    assert main(["export", str(run), "--format", "diffusers", "--out", str(tree)]) == 0
    assert sorted(p.name for p in tree.iterdir()) == [
        "README.md", "expert_0", "expert_1", "expert_2", "model_index.json", "pipeline.py",
        "router",
    ]  # fmt: skip
    index = json.loads((tree / "model_index.json").read_text())
    assert index["expert_0"] == ["diffusers", "PixArtTransformer2DModel"]
    assert index["expert_2"] == ["diffusers", "UNet2DModel"]
    argv = ["sample", "--experts", str(tree), "--router", str(tree / "router"), "--n", "2",
            "--steps", "3", "--out", str(tmp_path / "tree.png")]  # fmt: skip
    assert main(argv) == 0
    assert main(["export", str(run), "--out", str(tree)]) == 2
    assert "exists; export into a new folder" in capsys.readouterr().err


def one_line_error(capsys, argv, *parts):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hetdiff: error:") and "\n" not in err, err
    for part in parts:
        assert part in err, err


def test_import_expert_bad_input_is_one_line(run, tmp_path, capsys):
    folder = save_folder(tiny_unet(0), DDPMScheduler(), tmp_path / "m")
    sched = folder / "scheduler" / "scheduler_config.json"
    good = json.loads(sched.read_text())
    out = ["--out", str(tmp_path / "e")]
    sched.write_text(json.dumps({**good, "prediction_type": "flow_prediction"}))
    one_line_error(capsys, ["import-expert", str(folder), *out],
                   str(sched), "prediction_type 'flow_prediction'")  # fmt: skip
    sched.write_text(json.dumps({**good, "trained_betas": [0.02] * 999}))
    one_line_error(
        capsys, ["import-expert", str(folder), *out], str(sched), "trained_betas has 999"
    )
    sched.unlink()
    one_line_error(capsys, ["import-expert", str(folder), *out], "no scheduler config")
    sched.write_text(json.dumps(good))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "in_channels": 3, "out_channels": 3}))
    one_line_error(capsys, ["import-expert", str(folder), "--experts", str(run / "experts"), *out],
                   str(folder / "config.json"), "in_channels 3 disagrees with the ensemble's "
                   "channels 1")  # fmt: skip
    one_line_error(capsys, ["import-expert", str(folder), "--cluster", "5", "--partition",
                            str(run / "partition.json"), *out], "--cluster 5", "K=3")  # fmt: skip
