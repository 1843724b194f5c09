"""The launcher interface: submit one expert's job, ask its state, wait for a set of them.

An expert's job is its serialized ``ExpertJob`` (``expert-k/job.json``, ``hetdiff.training.jobs``);
every launcher runs it the same way, as ``python -m hetdiff.training.jobs expert-k/job.json``
with the same thread settings, so an expert trained anywhere is bitwise the expert trained here.
Each attempt first re-reads the job and sets ``resume`` from the folder (a committed checkpoint:
resume; none, or a partial first one: start over), so a requeued or rerun job continues exactly.

A launcher records what it submitted in ``expert-k/launch.json`` (launcher, job id, state), which
``hetdiff status`` reads and a rerun consults so that it never resubmits a finished or running
expert. States: ``PENDING``, ``RUNNING`` (``ACTIVE``), ``COMPLETED``, ``FAILED``, ``CANCELLED``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hetdiff.config import ResourceSettings
from hetdiff.io import atomic_path, atomic_write_json
from hetdiff.threads import SPIN_COUNT

if TYPE_CHECKING:
    from hetdiff.training.jobs import ExpertJob

PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = (
    "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED",
)  # fmt: skip
ACTIVE = (PENDING, RUNNING)
RECORD_NAME = "launch.json"  # in the expert's folder
LOG_NAME = "stdout.log"  # the job's output, appended by every attempt
ATTEMPT_LINE = "hetdiff launch: attempt,"  # each remote attempt's first line in the log


@dataclass(frozen=True)
class ExpertSubmission:
    """One expert's job as a launcher sees it."""

    index: int  # the expert (and cluster) k
    job_path: Path  # expert-k/job.json (an ExpertJob)
    resources: ResourceSettings  # what it asks of a remote island
    threads: int  # torch / OpenMP threads of the training process

    @property
    def folder(self) -> Path:
        return self.job_path.parent

    @property
    def name(self) -> str:
        return f"expert-{self.index}"


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The launcher's record of ``folder``'s job (``launch.json``), or None."""
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(folder: str | Path, **values: Any) -> dict[str, Any]:
    """Update ``launch.json`` in ``folder`` with ``values`` (atomically) and return it."""
    record = {**(read_record(folder) or {}), **values, "updated": time.time()}
    atomic_write_json(Path(folder) / RECORD_NAME, record)
    return record


def committed_state(folder: str | Path) -> bool:
    """Whether ``folder/train_state`` holds a committed (verified) checkpoint to resume."""
    from hetdiff.training.loop import STATE_DIRNAME
    from hetdiff.training.state import read_manifest

    return read_manifest(Path(folder) / STATE_DIRNAME) is not None


def prepare_attempt(job_path: str | Path) -> ExpertJob:
    """Re-read the job at ``job_path`` and rewrite it with ``resume`` set from its folder (a
    committed checkpoint resumes; a partial first one starts over); returns the job as written."""
    import dataclasses

    from hetdiff.training.jobs import ExpertJob

    job = ExpertJob.read(job_path)
    resume = committed_state(job.out)
    if resume != job.resume:
        job = dataclasses.replace(job, resume=resume)
        with atomic_path(job_path) as tmp:
            tmp.write_text(job.to_json())
    return job


def attempt_line(job: ExpertJob) -> str:
    """The first line an attempt at ``job`` writes to its log: whether it resumes from a
    committed checkpoint in its folder, or starts, which for a job with a ``state_url`` may
    still resume from a newer state committed in the store (the job pulls it first:
    ``run_expert_job``)."""
    if job.resume:
        what = "resuming from its last checkpoint"
    elif job.state_url is not None:
        what = "starting, unless its store holds a committed training state to resume from"
    else:
        what = "starting"
    return f"{ATTEMPT_LINE} {what}"


def job_command(job_path: str | Path, tasks: int = 1) -> list[str]:
    """The one command every launcher runs for an expert; ``tasks`` > 1 on this machine runs it
    as that many data-parallel processes under ``torch.distributed.run --standalone`` (a Slurm
    job starts one ``srun`` task per process instead: ``slurm.task_environment``)."""
    module = ["-m", "hetdiff.training.jobs", str(job_path)]
    if tasks > 1:
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tasks}"]
        return [sys.executable, *torchrun, *module]
    return [sys.executable, *module]


def log_name(rank: int = 0) -> str:
    """The log of process ``rank`` of a job: ``stdout.log`` for rank 0 (what ``hetdiff status``
    and the failure messages read), ``stdout-rank<r>.log`` for the others."""
    return LOG_NAME if rank == 0 else f"stdout-rank{rank}.log"


def job_environment(threads: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the training process: ``threads`` OpenMP / MKL threads that sleep
    when idle (the same on every launcher, so results are the same bits)."""
    env = dict(os.environ if environ is None else environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if "OMP_WAIT_POLICY" not in env:  # idle OpenMP threads spin briefly, then sleep
        env.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    return env


def run_job_process(
    job_path: str | Path, threads: int, rank: int = 0, environ: dict[str, str] | None = None
) -> int:
    """One attempt at the job on this machine (what a Slurm task or a Ray actor runs): set
    ``resume`` from the folder, run the job command with its output appended to ``stdout.log``
    (``log_name(rank)`` for process ``rank`` of a multi-process job, whose rendezvous variables
    ``environ`` adds), and return its exit status. Every rank computes the same ``resume``: no
    rank commits a checkpoint before all have joined the process group."""
    job = prepare_attempt(job_path)
    log_path = Path(job_path).parent / log_name(rank)
    with open(log_path, "a") as log:
        log.write(attempt_line(job) + "\n")
        log.flush()
        done = subprocess.run(
            job_command(job_path), stdout=log, stderr=subprocess.STDOUT,
            env={**job_environment(threads), **(environ or {})}, check=False,
        )  # fmt: skip
    return done.returncode


def last_log_line(folder: str | Path) -> str:
    """The last non-empty line of the job's log ("failed" when there is none)."""
    path = Path(folder) / LOG_NAME
    lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return lines[-1] if lines else "failed"


class Launcher(ABC):
    """Runs expert jobs somewhere: this machine, a Slurm cluster, a Ray cluster."""

    name: str = ""
    poll_seconds: float = 1.0

    @abstractmethod
    def submit(self, sub: ExpertSubmission) -> str:
        """Start (or queue) ``sub``'s job; record and return its job id."""

    @abstractmethod
    def status(self, sub: ExpertSubmission) -> str | None:
        """``sub``'s job state (``PENDING`` ... ``CANCELLED``), or None when this launcher
        knows no live job for it (never submitted, or lost with a previous driver)."""

    def wait(
        self, subs: Sequence[ExpertSubmission], log: Callable[[str], None] = print
    ) -> dict[int, str]:
        """Follow ``subs`` until none is active, logging each change of state; returns the
        final state of each expert by index."""
        states: dict[int, str | None] = {sub.index: None for sub in subs}
        while True:
            for sub in subs:
                state = self.status(sub) or FAILED
                if state != states[sub.index]:
                    record = read_record(sub.folder) or {}
                    log(f"expert {sub.index}: {self.name} job {record.get('job_id')} {state}")
                    write_record(sub.folder, state=state)
                    states[sub.index] = state
            if not any(state in ACTIVE for state in states.values()):
                return {k: str(v) for k, v in states.items()}
            time.sleep(self.poll_seconds)
