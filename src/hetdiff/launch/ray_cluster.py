"""The Ray launcher: each expert a Ray task on the node that holds its custom resources.

An island is a Ray node started with ``ray start ... --resources '{"island-a": 1}'``; the
expert whose ``resources.ray_resources`` lists ``island-a`` runs there (with ``num_cpus`` /
``num_gpus`` from its resources) and nowhere else. The driver connects to ``$RAY_ADDRESS`` (or
the local cluster, ``address="auto"``). The task runs the expert's job command on its node
(``run_job_process``), so the run folder must be one every node sees (a shared file system).
Ray tasks live with the driver that submitted them: a rerun resubmits an unfinished expert, which
resumes from its last checkpoint; a finished one is never resubmitted.
"""

from __future__ import annotations

import os
from typing import Any

from hetdiff.errors import HetdiffError
from hetdiff.launch.base import (
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    ExpertSubmission,
    Launcher,
    run_job_process,
    write_record,
)


def run_on_node(job_path: str, threads: int) -> tuple[int, str]:
    """The task body: (the job's exit status, the Ray node id it ran on)."""
    import ray

    return run_job_process(job_path, threads), ray.get_runtime_context().get_node_id()


class RayLauncher(Launcher):
    """Ray tasks pinned to nodes by custom resources."""

    name = "ray"
    poll_seconds = 1.0

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise HetdiffError("--launcher ray needs ray; pip install 'ray==2.60.0'") from None
        self._ray = ray
        address = address or os.environ.get("RAY_ADDRESS") or "auto"
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False, logging_level="warning")
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise HetdiffError(
                    f"no Ray cluster at {address} ({str(err).splitlines()[0]}); start one with "
                    "`ray start --head` or set RAY_ADDRESS"
                ) from None
        self._refs: dict[int, Any] = {}
        self._final: dict[int, str] = {}

    def submit(self, sub: ExpertSubmission) -> str:
        r = sub.resources
        labels = {label: 1.0 for label in r.ray_resources}
        known = self._ray.cluster_resources()
        missing = [label for label in labels if label not in known]
        if missing:
            raise HetdiffError(
                f"{sub.name} asks for Ray resources {missing} that no node offers; start a node "
                f"with `ray start --resources '{{\"{missing[0]}\": 1}}'` or fix resources"
            )
        task = self._ray.remote(run_on_node).options(
            num_cpus=r.cpus, num_gpus=r.gpus, resources=labels, max_retries=r.requeues,
            name=f"hetdiff-{sub.name}",
        )  # fmt: skip
        ref = task.remote(str(sub.job_path), sub.threads)
        self._refs[sub.index] = ref
        job_id = ref.task_id().hex()
        write_record(sub.folder, launcher=self.name, job_id=job_id, state=PENDING, node=None)
        return job_id

    def status(self, sub: ExpertSubmission) -> str | None:
        if sub.index in self._final:
            return self._final[sub.index]
        ref = self._refs.get(sub.index)
        if ref is None:
            return None  # not submitted by this driver
        ready, _ = self._ray.wait([ref], timeout=0)
        if not ready:
            return RUNNING
        try:
            code, node = self._ray.get(ref)
        except Exception as err:  # a task that died (node lost, retries spent)
            write_record(sub.folder, error=str(err).splitlines()[0])
            code, node = 1, None
        self._final[sub.index] = COMPLETED if code == 0 else FAILED
        write_record(sub.folder, node=node)
        return self._final[sub.index]
