"""A diverged training names real flags: the command it suggests runs to the end (from the last
good checkpoint with a 10x lower lr, or from scratch when none was written)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from hetdiff.experts.store import read_spec
from hetdiff.training.loop import DIVERGE_ENV

ARGS = ["train-expert", "--data", "digits", "--resolution", "8", "--objective", "flow",
        "--steps", "6", "--checkpoint-every", "2", "--batch-size", "16",
        "--mixed-precision", "no", "--no-progress"]  # fmt: skip


def hetdiff(args, diverge_at=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(DIVERGE_ENV, None)
    if diverge_at is not None:
        env[DIVERGE_ENV] = str(diverge_at)
    return subprocess.run([sys.executable, "-m", "hetdiff", *args], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip


def suggested_flags(stderr: str) -> list[str]:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hetdiff: error:"), stderr
    assert "--warmup-steps" not in lines[0] and "--grad-clip" not in lines[0]
    found = re.search(r"(?:rerun the same command with|e\.g\.) (--[^()]*?) \(now", lines[0])
    assert found, lines[0]
    return shlex.split(found.group(1))


def test_the_suggested_command_after_a_divergence_runs(tmp_path):
    out = tmp_path / "e"
    failed = hetdiff([*ARGS, "--out", str(out)], diverge_at=5)
    assert failed.returncode == 2
    assert "last good checkpoint at step 4" in failed.stderr
    flags = suggested_flags(failed.stderr)
    assert flags == ["--resume", "--allow-lr-change", "--lr", "0.0001"]
    resumed = hetdiff([*ARGS, "--out", str(out), *flags])
    assert resumed.returncode == 0, resumed.stderr
    assert read_spec(out / "expert.safetensors").steps == 6
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # step 6 ran at the new lr (warm-up 50 steps: lr * (k + 1) / 50 at 0-based step k)
    assert log[-1]["step"] == 6 and log[-1]["lr"] == pytest.approx(1e-4 * 6 / 50, rel=1e-12)


def test_without_a_checkpoint_the_advice_is_a_fresh_run(tmp_path):
    out = tmp_path / "e"
    failed = hetdiff([*ARGS, "--out", str(out)], diverge_at=1)
    assert failed.returncode == 2 and "no checkpoint was written yet" in failed.stderr
    flags = suggested_flags(failed.stderr)
    assert flags == ["--lr", "0.0001"] and "--resume" not in failed.stderr
    rerun = hetdiff([*ARGS, "--out", str(out), *flags])
    assert rerun.returncode == 0, rerun.stderr
    assert read_spec(out / "expert.safetensors").steps == 6
