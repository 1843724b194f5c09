"""Small assertions shared by the tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from hetdiff.training.loop import KILL_ENV


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    return float((a64 - b64).abs().max() / b64.abs().max())


def run_hetdiff(args: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    """``python -m hetdiff ARGS`` on one thread; ``kill`` sets the loop's kill hook (a stage
    name and step, e.g. ``after-artifact:24``), which SIGKILLs the process there."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(KILL_ENV, None)
    if kill is not None:
        env[KILL_ENV] = kill
    return subprocess.run([sys.executable, "-m", "hetdiff", *args], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip
