"""The local launcher: each expert in its own process on this machine, ``workers`` at a time
(the default of ``hetdiff run``). A child dies with the pipeline (Linux), so no orphan trains.
An expert with ``resources.tasks`` > 1 runs as that many data-parallel processes under
``torch.distributed.run --standalone`` (the same math as ``tasks`` Slurm tasks)."""

from __future__ import annotations

import subprocess
from typing import IO

from hetdiff.launch.base import (
    COMPLETED,
    FAILED,
    LOG_NAME,
    PENDING,
    RUNNING,
    ExpertSubmission,
    Launcher,
    job_command,
    job_environment,
    prepare_attempt,
    write_record,
)


class LocalLauncher(Launcher):
    """Child processes of this one; at most ``workers`` train at once, the rest wait."""

    name = "local"
    poll_seconds = 0.2

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._queued: list[ExpertSubmission] = []
        self._running: dict[int, tuple[subprocess.Popen, IO[str]]] = {}
        self._returncodes: dict[int, int] = {}

    def submit(self, sub: ExpertSubmission) -> str:
        self._queued.append(sub)
        write_record(sub.folder, launcher=self.name, job_id=None, state=PENDING)
        self._start_queued()
        return self._job_id(sub)

    def _job_id(self, sub: ExpertSubmission) -> str:
        proc = self._running.get(sub.index, (None, None))[0]
        return f"pid-{getattr(proc, 'pid', None)}" if proc is not None else "queued"

    def _start_queued(self) -> None:
        for k, (proc, log) in list(self._running.items()):
            if proc.poll() is not None:
                log.close()
                self._returncodes[k] = proc.returncode
                del self._running[k]
        while self._queued and len(self._running) < self.workers:
            sub = self._queued.pop(0)
            prepare_attempt(sub.job_path)
            log = open(sub.folder / LOG_NAME, "a")
            proc = subprocess.Popen(
                job_command(sub.job_path, sub.resources.tasks), stdout=log, stderr=subprocess.STDOUT,
                env=job_environment(sub.threads), preexec_fn=_die_with_parent,
            )  # fmt: skip
            self._running[sub.index] = (proc, log)
            write_record(sub.folder, job_id=f"pid-{getattr(proc, 'pid', None)}", state=RUNNING)

    def status(self, sub: ExpertSubmission) -> str | None:
        self._start_queued()
        if sub.index in self._running:
            return RUNNING
        if sub.index in self._returncodes:
            return COMPLETED if self._returncodes[sub.index] == 0 else FAILED
        if any(queued.index == sub.index for queued in self._queued):
            return PENDING
        return None  # not started by this process: a previous run's child died with it


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGKILL when the pipeline dies, so no orphan keeps training."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass
