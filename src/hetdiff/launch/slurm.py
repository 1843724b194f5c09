"""The Slurm launcher, through submitit: one batch job per expert with its own resources.

Each job runs ``ExpertTask`` (``run_job_process``: the expert's job command, resuming from its
last committed checkpoint). On preemption or at the time limit submitit's signal handler calls
``ExpertTask.checkpoint`` and requeues the job (up to ``requeues`` times); a job requeued by an
administrator (``scontrol requeue``) or cancelled and submitted again resumes the same way, and
the loop's resume is bit-exact. The job id and state go to ``expert-k/launch.json``; submitit's
scripts and logs to ``expert-k/slurm/``. States are read with ``squeue`` and ``scontrol`` (no
accounting database needed).

Multi-process experts (``resources.tasks`` > 1, torchrun-free as submitit recommends): the job
asks for ``tasks`` tasks on one node (``ntasks_per_node``; ``cpus`` and ``gpus`` per task), srun
starts ``ExpertTask`` once per task, and each task reads its rank from the Slurm environment
(``submitit.JobEnvironment``) and runs the job command with the rendezvous variables of
``task_environment``; the training loop joins one process group (gloo on CPU, NCCL on GPUs) and
averages the gradient over the same global batch. Rank r > 0 logs to ``stdout-rank<r>.log``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from typing import Any

from hetdiff.errors import HetdiffError
from hetdiff.launch.base import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    ExpertSubmission,
    Launcher,
    last_log_line,
    read_record,
    run_job_process,
    write_record,
)

# Slurm job states (squeue %T / scontrol JobState) -> launcher states
_STATES = {
    "PENDING": PENDING,
    "REQUEUED": PENDING,
    "REQUEUE_FED": PENDING,
    "REQUEUE_HOLD": PENDING,
    "CONFIGURING": PENDING,
    "RESV_DEL_HOLD": PENDING,
    "SPECIAL_EXIT": PENDING,
    "RUNNING": RUNNING,
    "COMPLETING": RUNNING,
    "SUSPENDED": RUNNING,
    "STAGE_OUT": RUNNING,
    "SIGNALING": RUNNING,
    "RESIZING": RUNNING,
    "STOPPED": RUNNING,
    "COMPLETED": COMPLETED,
    "CANCELLED": CANCELLED,
}  # fmt: skip  (anything else: FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, PREEMPTED, ...)


class ExpertTask:
    """The callable a Slurm job runs (pickled by submitit): one attempt at the expert's job."""

    def __init__(self, job_path: str, threads: int) -> None:
        self.job_path = job_path
        self.threads = threads

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        extra = task_environment(env) if env.num_tasks > 1 else {}
        code = run_job_process(self.job_path, self.threads, env.global_rank, extra)
        if code != 0:
            folder = str(self.job_path).rsplit("/", 1)[0]
            raise RuntimeError(f"expert job exited with status {code}: {last_log_line(folder)}")
        return code

    def checkpoint(self) -> Any:
        """Preempted or timed out: requeue this same task (the next attempt resumes)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(ExpertTask(self.job_path, self.threads))


def task_environment(env: Any) -> dict[str, str]:
    """The ``torch.distributed`` rendezvous variables of one srun task, from its
    ``submitit.JobEnvironment``: ``RANK`` = global rank, ``WORLD_SIZE`` = tasks of the job,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` = the job's first host and a
    ``MASTER_PORT`` in [20000, 40000) derived from the job id (the same in every task)."""
    port = 20000 + int(hashlib.sha256(str(env.job_id).encode()).hexdigest(), 16) % 20000
    return {
        "RANK": str(env.global_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(env.num_tasks // max(1, env.num_nodes)),
        "MASTER_ADDR": str(env.hostnames[0]),
        "MASTER_PORT": str(port),
    }


def _require(command: str) -> None:
    if shutil.which(command) is None:
        raise HetdiffError(
            f"--launcher slurm needs Slurm's {command} on PATH; run on a Slurm login node "
            "(or install slurm-wlm)"
        )


def slurm_job_state(job_id: str) -> str | None:
    """The raw Slurm state of ``job_id`` (``squeue``, then ``scontrol`` for a finished job still
    remembered), or None when Slurm no longer knows it."""
    out = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True
    )
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.split()[0]
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True
    )
    for field in shown.stdout.split() if shown.returncode == 0 else []:
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return None


class SlurmLauncher(Launcher):
    """One sbatch job per expert through ``submitit.SlurmExecutor``."""

    name = "slurm"
    poll_seconds = 2.0

    def submit(self, sub: ExpertSubmission) -> str:
        _require("sbatch")
        import submitit

        r = sub.resources
        executor = submitit.SlurmExecutor(folder=sub.folder / "slurm", max_num_timeout=r.requeues)
        params: dict[str, Any] = {
            "job_name": f"hetdiff-{sub.name}",
            "nodes": 1,
            "ntasks_per_node": r.tasks,
            "cpus_per_task": r.cpus,
            "time": r.time,
            "signal_delay_s": min(90, max(10, r.time * 6)),
            "mem": r.mem,
            "partition": r.partition,
            "account": r.account,
            "gpus_per_node": r.gpus or None,
            "stderr_to_stdout": True,
        }
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        try:
            job = executor.submit(ExpertTask(str(sub.job_path), sub.threads))
        except Exception as err:  # submitit raises its own errors with sbatch's message
            raise HetdiffError(
                f"sbatch refused {sub.name}: {str(err).strip()}".splitlines()[0]
            ) from None
        write_record(sub.folder, launcher=self.name, job_id=str(job.job_id), state=PENDING)
        return str(job.job_id)

    def status(self, sub: ExpertSubmission) -> str | None:
        record = read_record(sub.folder)
        if not record or record.get("launcher") != self.name or not record.get("job_id"):
            return None
        raw = slurm_job_state(record["job_id"])
        if raw is None:  # forgotten by Slurm (MinJobAge): what it left decides
            return record.get("state") if record.get("state") in (COMPLETED, FAILED) else FAILED
        return _STATES.get(raw.rstrip("+"), FAILED)

    def cancel(self, sub: ExpertSubmission) -> None:
        """``scancel`` the expert's job (the pipeline never does; a user or a test may)."""
        record = read_record(sub.folder) or {}
        if record.get("job_id"):
            subprocess.run(["scancel", str(record["job_id"])], check=False)
