"""Threads per process: as many as the cores this process may really use, split among the
processes that share them, with OpenMP threads that spin only briefly before they sleep.

Two processes with torch's default thread count on a 2-core machine (or one process beside a
busy neighbour) oversubscribe the cores; OpenMP threads that spin while waiting for work then
burn the time the other process needs (measured here: 300 steps of a tiny expert ran 3x slower
two-at-a-time than alone). ``available_cpus`` reads the CPU affinity mask and the cgroup
quota (``cpu.max``, cgroup v2; ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, v1), and
``thread_env`` is the environment that gives each of ``workers`` processes its share, with a
short spin (``GOMP_SPINCOUNT``, torch's CPU wheel ships libgomp) before an idle thread sleeps.
Measured on 2 cores (150 steps of a tiny expert): the fully passive policy
(``OMP_WAIT_POLICY=PASSIVE``) cost 1.5x alone (11.3 s against 7.7 s), a spin of 10,000 cost
nothing (8.0 s); two processes of one thread each take 9.4 s together against 54.5 s for two with
the runtime's defaults. The setting must be in the environment before the OpenMP runtime loads
(before ``import torch``): the command line sets it first thing, the pipeline for its children.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from hetdiff.allocator import RETAIN_BYTES, retain_freed_memory

SPIN_COUNT = "10000"  # libgomp: busy-wait iterations before an idle thread sleeps (default 300k)
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


def _cgroup_quota() -> float | None:
    """CPUs granted by the cgroup quota (e.g. 1.5), or None when unlimited or unknown."""
    try:
        if _CGROUP_V2.is_file():
            quota, period = _CGROUP_V2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_file, period_file = _CGROUP_V1 / "cpu.cfs_quota_us", _CGROUP_V1 / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text())
            return None if quota <= 0 else quota / int(period_file.read_text())
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """Cores this process may run on: the affinity mask, capped by the cgroup quota (rounded up,
    at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def threads_per_worker(workers: int = 1) -> int:
    """Each of ``workers`` parallel processes gets ``available_cpus() // workers`` threads (>= 1)."""
    return max(1, available_cpus() // max(1, int(workers)))


def thread_env(workers: int = 1, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) with OMP/MKL thread counts for one of ``workers``
    processes and a short OpenMP spin; explicit settings already in ``environ`` win."""
    env = dict(os.environ if environ is None else environ)
    threads = str(threads_per_worker(workers))
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    if "OMP_WAIT_POLICY" not in env:  # an explicit wait policy wins over the spin count
        env.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    # glibc reads these at a child's start: freed activations stay for reuse (hetdiff.allocator)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(RETAIN_BYTES))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(RETAIN_BYTES))
    return env


OFF_SWITCH = "HETDIFF_THREAD_DEFAULTS"  # "runtime": leave the runtime's own defaults (benchmarks)


def configure_this_process(workers: int = 1) -> None:
    """Set ``thread_env(workers)`` in this process's environment; call before torch loads (the
    wait policy is read once, when the OpenMP runtime starts). Existing settings win;
    ``HETDIFF_THREAD_DEFAULTS=runtime`` leaves everything to the runtime (for comparisons)."""
    if os.environ.get(OFF_SWITCH) == "runtime":
        return
    for key, value in thread_env(workers).items():
        os.environ.setdefault(key, value)
    retain_freed_memory()  # this process's malloc started before the variables above were set
