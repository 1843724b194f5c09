"""The examples in examples/ run as a user runs them (a fresh Python process, small sizes) and
produce what they promise: checkpoints that reopen, grids that equal the API's own samples,
losses that fell, plots of the run's real numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hetdiff

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SVG = "{http://www.w3.org/2000/svg}"


def run_example(name: str, *args: str) -> dict:
    """Run examples/<name> in its own process; return the JSON summary of its last line."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=EXAMPLES.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_examples_stay_short():
    for path in EXAMPLES.glob("*.py"):
        assert len(path.read_text().splitlines()) < 60, path.name


def test_heterogeneous_ensemble_of_a_ddpm_and_a_flow_checkpoint(tmp_path):
    out = tmp_path / "hetero"
    summary = run_example(
        "heterogeneous_ensemble.py", "--out", str(out), "--steps", "20", "--sample-steps", "6"
    )
    assert summary["objectives"] == ["ddpm", "flow"]
    # the cosine DDPM expert covers less than [0, 1], so the ensemble integrates over its range
    lo, hi = summary["t_range"]
    assert 0.0 < lo < 0.01 and 0.999 < hi < 1.0
    # the example's grids are exactly what the API draws from the saved checkpoints
    ensemble = hetdiff.load_ensemble(out / "experts", out / "router")
    assert tuple(ensemble.t_range) == (lo, hi)
    for strategy in ("top1", "full"):
        images = hetdiff.sample(ensemble, n=16, steps=6, strategy=strategy)
        again = hetdiff.save_images(images, tmp_path / f"{strategy}.png")
        np.testing.assert_array_equal(pixels(summary["grids"][strategy]), pixels(again))
    assert not np.array_equal(pixels(summary["grids"]["top1"]), pixels(summary["grids"]["full"]))


def test_own_ddpm_network_mixed_with_a_flow_expert(tmp_path):
    summary = run_example("own_ddpm_network.py", "--out", str(tmp_path), "--steps", "30")
    # the plain DDPM loop learned something: predicting eps ~ N(0, I) by 0 would give MSE 1
    assert summary["loss"] < 0.8
    # the mixture is valid where the DDPM table is: linear 1e-4..0.02, T = 1000 (design.md 2)
    lo, hi = summary["t_range"]
    assert lo == pytest.approx(0.0099, abs=1e-4) and hi == pytest.approx(0.9937, abs=1e-4)
    grids = {name: pixels(path) for name, path in summary["grids"].items()}
    assert grids["mine"].shape == grids["flow"].shape == grids["mixed"].shape
    assert not np.array_equal(grids["mixed"], grids["mine"])
    assert not np.array_equal(grids["mixed"], grids["flow"])


def write_image_folder(root: Path) -> Path:
    """Two classes of 12x12 gray images: filled squares and rings, at random places."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:12, :12]
    for name in ("rings", "squares"):
        (root / name).mkdir(parents=True)
        for i in range(16):
            cy, cx = rng.integers(4, 8, size=2)
            if name == "squares":
                mask = (abs(yy - cy) <= 2) & (abs(xx - cx) <= 2)
            else:
                mask = abs(np.hypot(yy - cy, xx - cx) - 3) < 0.8
            Image.fromarray((mask * 255).astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


def test_train_one_expert_on_an_image_folder(tmp_path):
    folder = write_image_folder(tmp_path / "images")
    out = tmp_path / "expert"
    summary = run_example(
        "train_on_image_folder.py", "--folder", str(folder), "--out", str(out),
        "--resolution", "8", "--steps", "30",
    )  # fmt: skip
    assert summary["classes"] == ["rings", "squares"]
    assert len(summary["losses"]) == 3 and summary["losses"][-1] < summary["losses"][0]
    expert = hetdiff.load_expert(summary["checkpoint"])  # the checkpoint reopens
    assert expert.spec.data_spec == f"imagefolder:{folder}"
    assert (expert.spec.resolution, expert.spec.num_classes, expert.spec.steps) == (8, 2, 30)
    for name in ("rings", "squares"):
        grid = pixels(summary["grids"][name])
        assert grid.shape[:2] == pixels(summary["grids"]["rings"]).shape[:2]
    assert not np.array_equal(
        pixels(summary["grids"]["rings"]), pixels(summary["grids"]["squares"])
    )


def test_plot_a_runs_metrics_and_logs(tmp_path):
    run = tmp_path / "run"
    summary = run_example("plot_run_metrics.py", "--run", str(run), "--tiny")
    metrics = hetdiff.read_metrics(run)
    assert summary["router_accuracy"] == [b["accuracy"] for b in metrics["router_by_t"]]
    assert len(summary["router_accuracy"]) == 10
    assert all(0.0 <= a <= 1.0 for a in summary["router_accuracy"])
    assert set(summary["losses"]) == {"expert-0", "expert-1", "router"}
    for name, losses in summary["losses"].items():
        folder = run / "router" if name == "router" else run / "experts" / name
        assert losses == [row["loss"] for row in hetdiff.read_log(folder)]
    lines = {}
    for plot in summary["plots"]:
        root = ET.parse(plot).getroot()  # well-formed SVG
        lines[Path(plot).name] = len(root.findall(f"{SVG}polyline"))
    assert lines == {"losses.svg": 3, "router.svg": 2}
