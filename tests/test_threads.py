"""Threads per process follow the cores really available (affinity, cgroup quota), are shared
among parallel workers, and OpenMP threads spin only briefly before they sleep."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import hetdiff.threads as threads


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """Point the cgroup v2 file at a temporary one; returns a setter for its contents."""
    path = tmp_path / "cpu.max"
    monkeypatch.setattr(threads, "_CGROUP_V2", path)
    monkeypatch.setattr(threads, "_CGROUP_V1", tmp_path / "none")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    return path.write_text


@pytest.mark.parametrize(
    "quota, cpus", [("max 100000\n", 4), ("150000 100000\n", 2), ("50000 100000\n", 1),
                    ("800000 100000\n", 4), ("garbage\n", 4)],
)  # fmt: skip
def test_available_cpus_is_the_affinity_capped_by_the_quota(cgroup, quota, cpus):
    cgroup(quota)
    assert threads.available_cpus() == cpus


def test_workers_share_the_cores_and_explicit_settings_win(cgroup):
    cgroup("max 100000\n")
    assert [threads.threads_per_worker(w) for w in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    env = threads.thread_env(2, {})
    retain = str(1 << 30)  # hetdiff.allocator.RETAIN_BYTES, read by glibc at a child's start
    assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "GOMP_SPINCOUNT": "10000",
                   "MALLOC_MMAP_THRESHOLD_": retain, "MALLOC_TRIM_THRESHOLD_": retain}  # fmt: skip
    mine = threads.thread_env(2, {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"})
    assert mine["OMP_NUM_THREADS"] == mine["MKL_NUM_THREADS"] == "1"
    assert mine["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in mine


def test_the_command_line_sets_the_policy_before_torch_starts():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_"))}
    code = (
        "import os, hetdiff.cli, torch; "
        "print(os.environ['GOMP_SPINCOUNT'], os.environ['OMP_NUM_THREADS'], torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    policy, omp, torch_threads = out.stdout.split()
    assert policy == "10000" and int(omp) == threads.available_cpus() == int(torch_threads)
