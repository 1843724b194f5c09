"""Planning and progress for ``benchmarks/evidence.py``: keys, the plan of a run (every model
and evaluation counted with its FLOPs, once, and whether it is cached), progress lines with the
time left at the throughputs measured so far.

The parts run twice: first with ``Progress.planning`` set, when ``Lab`` counts each job
(``plan``) and runs nothing, then for real, when each finished job reports (``finished``):
training FLOPs 3 x forward x batch x steps, sampling n x NFE x forward x experts run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from hetdiff.config import ExpertSettings

# Throughputs on one thread assumed before the first job of a kind is measured (FLOP/s;
# measured at 16 px, batch 64: tiny/small DiT training 39/57 GFLOP/s, sampling 40/62), each
# further thread adding THREAD_GAIN of one; seconds per evaluation beyond sampling (judge
# features, bootstrap, cluster assignment of the samples).
DEFAULT_RATES = {"train": 45e9, "sample": 50e9}
THREAD_GAIN = 0.7
EVAL_OVERHEAD_S = 8.0


def digest(obj: Any) -> str:
    """12 hex digits of sha256 over ``obj`` as sorted JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def settings_key(settings: ExpertSettings) -> dict[str, Any]:
    """What identifies a training run: every field but the step count and bookkeeping; fields at
    None are left out (an option added later at its default keeps the key)."""
    drop = ("steps", "checkpoint_every", "progress", "compile")
    return {k: v for k, v in settings.to_dict().items() if k not in drop and v is not None}


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Pending(dict):
    """The metrics of an evaluation in the planning pass: every value NaN."""

    def __missing__(self, key: str) -> Any:
        return [math.nan, math.nan] if key.endswith("_ci") else math.nan


class Progress:
    """The plan of a run and its progress: jobs left, FLOPs left, measured throughputs."""

    def __init__(self) -> None:
        self.planning = True
        self._planned_paths: set[Path] = set()
        self.planned = {"model": 0, "eval": 0, "cached": 0, "shared": 0}
        self.left = {"train": 0.0, "sample": 0.0, "model": 0, "eval": 0}
        self.spent = {"train": 0.0, "sample": 0.0}
        self.flops_done = {"train": 0.0, "sample": 0.0}
        self.done = {"model": 0, "eval": 0}
        self.started = time.time()

    def begin(self) -> None:
        """End the planning pass: print the plan and its estimate; real jobs run from now on."""
        self.planning = False
        self._planned_paths.clear()
        p, left = self.planned, self.left
        self.log(
            f"plan: {p['model']} trainings and {p['eval']} evaluations to run "
            f"({p['cached']} cached, {p['shared']} shared between parts); "
            f"{left['train'] / 1e12:.1f} TFLOP training, "
            f"{left['sample'] / 1e12:.1f} TFLOP sampling; estimate "
            f"{fmt_duration(self.remaining())} at {self.rate_text()}"
        )

    def rate(self, kind: str) -> float:
        measured = self.spent[kind] > 5 and self.flops_done[kind] > 0
        if measured:
            return self.flops_done[kind] / self.spent[kind]
        return DEFAULT_RATES[kind] * (1 + THREAD_GAIN * (torch.get_num_threads() - 1))

    def rate_text(self) -> str:
        return ", ".join(f"{k} {self.rate(k) / 1e9:.0f} GFLOP/s" for k in ("train", "sample"))

    def remaining(self) -> float:
        left = self.left
        return (
            left["train"] / self.rate("train")
            + left["sample"] / self.rate("sample")
            + left["eval"] * EVAL_OVERHEAD_S
        )

    def plan(self, kind: str, flops: float, cached: bool, path: Path) -> None:
        """Count a job of the planning pass (once per output ``path``)."""
        if cached or path in self._planned_paths:
            self.planned["cached" if cached else "shared"] += 1
            return
        self._planned_paths.add(path)
        self.planned["model" if kind == "train" else "eval"] += 1
        self.left[kind] += flops
        self.left["model" if kind == "train" else "eval"] += 1

    def finished(self, kind: str, flops: float, seconds: float, what: str) -> None:
        job = "model" if kind == "train" else "eval"
        self.left[kind] = max(0.0, self.left[kind] - flops)
        self.left[job] = max(0, self.left[job] - 1)
        self.spent[kind] += seconds
        self.flops_done[kind] += flops
        self.done[job] += 1
        total = self.done[job] + self.left[job]
        self.log(
            f"{job} {self.done[job]}/{total} {what} ({seconds:.0f} s); elapsed "
            f"{fmt_duration(time.time() - self.started)}, left ~{fmt_duration(self.remaining())}"
        )

    def log(self, message: str) -> None:
        if not self.planning:
            print(f"[evidence {time.strftime('%H:%M:%S')}] {message}", flush=True)
