"""The GPU check script runs its code path on the CPU and skips, saying so, without CUDA; the
evidence and stream-decoding benchmarks run at a tiny size."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_gpu_check_code_path_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks/gpu_check.py"),
        "--device",
        "cpu",
        "--small",
        "--json",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    train, memory, sample = results["train"], results["memory"], results["sample"]
    assert train["flops_per_step"] > 0
    for row in (
        train["ours_eager"],
        train["pixart_eager"],
        memory["plain"],
        memory["checkpointed"],
    ):
        assert row["images_per_s"] > 0
    assert sample["ratio_top1_over_diffusers"] > 0 and sample["ratio_single_over_diffusers"] > 0
    assert "error" not in results["peak"]


def test_gpu_check_without_cuda_says_skipped(tmp_path):
    if torch.cuda.is_available():
        return  # on a GPU machine the script runs for real (benchmarks/gpu_check.sh)
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here; the GPU check was skipped" in done.stdout


EVIDENCE_SECTIONS = (
    "## FLOP for FLOP",
    "## Mixed against homogeneous",
    "## Feature clusters against a random partition",
    "## Router strategies",
    "## Warm start",
    "## Same noise, same image?",
)


def _table_rows(markdown: str) -> list[str]:
    """Data rows of every markdown table (the header row and separator skipped)."""
    lines, rows = markdown.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("|") and not line.startswith("|---"):
            if i + 1 < len(lines) and lines[i + 1].startswith("|---"):
                continue  # a header row
            rows.append(line)
    return rows


@pytest.mark.slow
def test_evidence_smoke_writes_every_part_and_reuses_its_cache(tmp_path):
    """benchmarks/evidence.py --smoke: every part's table with intervals on every row, plots
    that parse as SVG, and a second invocation that trains and evaluates nothing again."""
    cache, out = tmp_path / "cache", tmp_path / "docs" / "evidence.md"
    env = {**ENV, "HETDIFF_CACHE_DIR": str(tmp_path / "hetdiff-cache")}
    cmd = [sys.executable, str(ROOT / "benchmarks/evidence.py"), "--smoke", "--cache", str(cache),
           "--out", str(out)]  # fmt: skip
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        cmd += ["--pretrain-data", "digits"]  # the warm start's source data, where not installed
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    planned = re.search(r"plan: (\d+) trainings and (\d+) evaluations", first.stdout)
    assert planned and int(planned[1]) > 0 and int(planned[2]) > 0
    # the plan counted exactly the jobs that ran
    assert f"model {planned[1]}/{planned[1]} " in first.stdout
    assert f"eval {planned[2]}/{planned[2]} " in first.stdout
    text = out.read_text()
    for title in EVIDENCE_SECTIONS:
        assert title in text, title
    assert "Invocation: `python benchmarks/evidence.py --smoke" in text
    assert "Wall time of this invocation" in text
    rows = _table_rows(text)
    assert len(rows) >= 30
    for row in rows:
        assert re.search(r"\d \[-?\d+\.\d+, -?\d+\.\d+\]", row), row  # value [low, high]
        assert "pending" not in row and "nan" not in row, row
    plots = sorted((out.parent / "evidence").glob("*.svg"))
    assert [p.name for p in plots] == ["flops_fd.svg", "warmstart_fd.svg"]
    for plot in plots:
        root = ET.parse(plot).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        lines = list(root.iter("{http://www.w3.org/2000/svg}polyline"))
        assert len(lines) >= 3, plot.name  # one curve per arm
    files = sorted(cache.glob("models/*/step-*.safetensors")) + sorted(cache.glob("evals/*"))
    mtimes = {f: f.stat().st_mtime_ns for f in files}

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "plan: 0 trainings and 0 evaluations to run" in second.stdout
    assert " trained " not in second.stdout
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    assert (
        sorted(cache.glob("models/*/step-*.safetensors")) + sorted(cache.glob("evals/*")) == files
    )
    # the same numbers, read back from the cache
    assert _table_rows(out.read_text()) == rows
    # --report-only: the same rows from the cache alone, nothing run, marked partial
    partial = tmp_path / "partial.md"
    third = subprocess.run([*cmd[:-1], str(partial), "--report-only"], capture_output=True,
                           text=True, env=env, timeout=600)  # fmt: skip
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "plan:" not in third.stdout and " trained " not in third.stdout
    assert _table_rows(partial.read_text()) == rows
    assert "0 evaluations and 0 trainings of this plan have not run" in partial.read_text()


def test_stream_decode_benchmark_runs_and_checks_its_batches():
    """benchmarks/stream_decode.py at a tiny size: both kinds of step run, the batches of the
    pooled and inline streams are compared (an assertion inside), and a ratio is printed."""
    cmd = [sys.executable, str(ROOT / "benchmarks/stream_decode.py"), "--images", "64",
           "--width", "48", "--height", "40", "--resolution", "8", "--batch", "8",
           "--batches", "2", "--rounds", "2", "--step-ms", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ratios = re.findall(r"ratio 2 workers / inline: ([\d.]+)x", done.stdout)
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios), done.stdout
