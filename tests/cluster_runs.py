"""A toy run (digits, 8 px, two experts) and the command line, for the launcher and store
tests that start real engines (tests/launch)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

TOY = """
data = "digits"
resolution = 8
workers = 2
[cluster]
k = 2
fine = 8
features = "pixels"
[[experts]]
objective = "ddpm"
prediction = "eps"
schedule = "cosine"
steps = 24
batch_size = 16
[[experts]]
objective = "flow"
steps = {steps1}
batch_size = 16
[router]
steps = 10
batch_size = 16
[sample]
n = 8
steps = 2
strategies = ["top1"]
[evaluate]
n = 8
fid = false
judge = false
per_expert = false
bootstrap = 0
{extra}
"""
LONG_STEPS = 400  # expert 1 trains long enough to be interrupted mid-way


def toy_config(folder: Path, extra: str = "", steps1: int = LONG_STEPS) -> Path:
    path = folder / "toy.toml"
    path.write_text(TOY.format(extra=extra, steps1=steps1))
    return path


def hetdiff(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """``python -m hetdiff ARGS`` with one thread, output captured as text."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "hetdiff", *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=full_env, **kwargs,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    log, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, log
    return log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
