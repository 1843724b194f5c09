"""``hetdiff run --launcher slurm`` on a real one-node Slurm cluster the fixture starts: the
experts equal the local launcher's bit for bit, also after ``scontrol requeue`` mid-training and
after ``scancel`` and a rerun; a rerun never resubmits a finished or running expert; an expert
of two srun tasks (data-parallel, gloo on CPU) equals the same two-process job run here."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cluster_runs import finish, hetdiff, toy_config

pytestmark = pytest.mark.daemons

EXPERTS = ("expert-0", "expert-1")


def same_experts(run: Path, reference: Path) -> None:
    """Every expert checkpoint byte-identical (tensors, spec metadata and digest)."""
    for name in EXPERTS:
        ours = (run / "experts" / name / "expert.safetensors").read_bytes()
        assert ours == (reference / "experts" / name / "expert.safetensors").read_bytes(), name


def record(run: Path, name: str) -> dict:
    return json.loads((run / "experts" / name / "launch.json").read_text())


def wait_for_checkpoint(proc: subprocess.Popen, run: Path, name: str = "expert-1") -> str:
    """Wait until expert ``name`` committed a checkpoint; return its Slurm job id."""
    latest = run / "experts" / name / "train_state" / "latest.json"
    deadline = time.time() + 300
    while not latest.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    return record(run, name)["job_id"]


def attempts(run: Path, name: str) -> int:
    log = (run / "experts" / name / "stdout.log").read_text()
    return log.count("training flow expert") + log.count("training ddpm expert")


def test_slurm_run_equals_the_local_run(slurm_cluster, local_run, tmp_path):
    out = tmp_path / "run"
    log = finish(
        hetdiff("run", str(toy_config(tmp_path)), "--launcher", "slurm", "--out", str(out))
    )
    assert "submitted to the slurm launcher" in log and "slurm job" in log
    same_experts(out, local_run)
    for name in EXPERTS:
        entry = record(out, name)
        assert entry["launcher"] == "slurm" and entry["state"] == "COMPLETED"
        assert entry["job_id"].isdigit() and attempts(out, name) == 1
    status = finish(hetdiff("status", str(out))).splitlines()
    assert len(status) == 2 and all("slurm" in line and "COMPLETED" in line for line in status)
    again = finish(
        hetdiff("run", str(toy_config(tmp_path)), "--launcher", "slurm", "--out", str(out))
    )
    assert again.count("done before, skipped") == 6 and "submitted" not in again


def test_a_requeued_slurm_job_resumes_and_ends_bitwise_equal(slurm_cluster, local_run, tmp_path):
    out = tmp_path / "run"
    proc = hetdiff("run", str(toy_config(tmp_path)), "--launcher", "slurm", "--out", str(out))
    job_id = wait_for_checkpoint(proc, out)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:  # a requeued job may wait for its
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"],  # BeginTime
                       capture_output=True)  # fmt: skip
        time.sleep(1)
    finish(proc)
    assert attempts(out, "expert-1") == 2  # trained twice: the second attempt resumed
    log = (out / "experts" / "expert-1" / "stdout.log").read_text()
    assert log.count("hetdiff launch: attempt, starting") == 1
    assert log.count("hetdiff launch: attempt, resuming from its last checkpoint") == 1
    assert record(out, "expert-1")["job_id"] == job_id  # the same job, requeued
    same_experts(out, local_run)


def test_a_cancelled_slurm_job_resumes_on_rerun_and_ends_bitwise_equal(
    slurm_cluster, local_run, tmp_path
):
    out, config = tmp_path / "run", str(toy_config(tmp_path))
    proc = hetdiff("run", config, "--launcher", "slurm", "--out", str(out))
    job_id = wait_for_checkpoint(proc, out)
    subprocess.run(["scancel", job_id], check=True)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "expert 1:" in log, log  # named, with the fix
    assert record(out, "expert-1")["state"] == "CANCELLED"
    log = finish(hetdiff("run", config, "--launcher", "slurm", "--out", str(out)))
    assert "expert 0: finished before, kept" in log
    assert "expert 1: resuming from its last checkpoint" in log
    assert record(out, "expert-1")["job_id"] != job_id and attempts(out, "expert-1") == 2
    same_experts(out, local_run)


def test_a_rerun_follows_a_running_slurm_job_instead_of_resubmitting(slurm_cluster, tmp_path):
    out, config = tmp_path / "run", str(toy_config(tmp_path))
    first = hetdiff("run", config, "--launcher", "slurm", "--out", str(out))
    job_id = wait_for_checkpoint(first, out)
    first.kill()  # the driver dies; the Slurm job trains on
    first.wait()
    log = finish(hetdiff("run", config, "--launcher", "slurm", "--out", str(out)))
    assert "expert 1: its slurm job is queued or running, following it" in log
    assert record(out, "expert-1")["job_id"] == job_id and attempts(out, "expert-1") == 1


TWO_TASKS = """
[[resources]]
[[resources]]
tasks = 2
"""


def test_a_two_task_slurm_expert_equals_the_same_two_process_job_here(slurm_cluster, tmp_path):
    config = str(toy_config(tmp_path, steps1=24, extra=TWO_TASKS))
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    finish(hetdiff("run", config, "--out", str(local)))  # expert 1: torch.distributed.run
    finish(hetdiff("run", config, "--launcher", "slurm", "--out", str(slurm)))
    for run in (local, slurm):
        resolved = json.loads((run / "experts" / "expert-1" / "train_config.json").read_text())
        assert resolved["world_size"] == 2, run
    folder = slurm / "experts" / "expert-1"
    assert "training flow expert" in (folder / "stdout-rank1.log").read_text()  # its own task
    assert not (slurm / "experts" / "expert-0" / "stdout-rank1.log").exists()
    same_experts(slurm, local)
