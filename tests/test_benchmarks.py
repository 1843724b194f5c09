"""The GPU check script runs its code path on the CPU and skips, saying so, without CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
