"""The Ray launcher: each expert a detached Ray actor on the node that holds its custom resources.

An island is a Ray node started with ``ray start ... --resources '{"island-a": 1}'``; the
expert whose ``resources.ray_resources`` lists ``island-a`` runs there (with ``num_cpus`` /
``num_gpus`` from its resources) and nowhere else. The driver connects to ``$RAY_ADDRESS`` (or
the local cluster, ``address="auto"``). The actor runs the expert's job command on its node
(``run_job_process``), so the run folder must be one every node sees (a shared file system).

The actor is *detached* (``lifetime="detached"``, named after the job file, in the ``hetdiff``
namespace): it outlives the driver that submitted it, so killing ``hetdiff run`` does not stop
the training. A rerun finds the actor by name and follows it instead of resubmitting. When the
job ends the actor writes ``expert-k/ray_result.json`` (exit status, node, submission id) and
kills itself, freeing the island; a driver that finds no live actor reads that file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_write_json
from hetdiff.launch.base import (
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    ExpertSubmission,
    Launcher,
    read_record,
    run_job_process,
    write_record,
)

NAMESPACE = "hetdiff"  # the Ray namespace of every expert actor
RESULT_NAME = "ray_result.json"  # written by the actor alone when its job ends
STATE_TIMEOUT_S = 2.0  # an actor that does not answer in this time is not placed yet


def actor_name(sub: ExpertSubmission) -> str:
    """The detached actor's name: ``hetdiff-<sha256 of the job file's path>-expert-k`` (one
    per run folder and expert, so a rerun of the same run finds it)."""
    digest = hashlib.sha256(str(Path(sub.job_path).resolve()).encode()).hexdigest()[:16]
    return f"hetdiff-{digest}-{sub.name}"


class ExpertActor:
    """Trains one expert on its node in a background thread; ``state`` answers meanwhile."""

    def __init__(self, job_path: str, threads: int, submission: str) -> None:
        import threading

        import ray

        self.job_path, self.threads, self.submission = job_path, threads, submission
        self.node = ray.get_runtime_context().get_node_id()
        self.code: int | None = None
        threading.Thread(target=self._train, daemon=True).start()

    def _train(self) -> None:
        import ray

        try:
            self.code = run_job_process(self.job_path, self.threads)
        except Exception:  # the job could not even start: a failure like any other
            self.code = 1
        result = {"exit_code": self.code, "node": self.node, "submission": self.submission}
        atomic_write_json(Path(self.job_path).parent / RESULT_NAME, result)
        ray.kill(ray.get_runtime_context().current_actor)  # free the island's resources

    def state(self) -> tuple[str, str]:
        """(``RUNNING`` / ``COMPLETED`` / ``FAILED``, the node id)."""
        if self.code is None:
            return RUNNING, self.node
        return (COMPLETED if self.code == 0 else FAILED), self.node


def read_result(sub: ExpertSubmission) -> dict[str, Any] | None:
    """The actor's ``ray_result.json`` for ``sub``'s current submission, or None."""
    path = sub.folder / RESULT_NAME
    record = read_record(sub.folder) or {}
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("submission") != record.get("submission"):
        return None  # an earlier submission's result
    return result


class RayLauncher(Launcher):
    """Detached Ray actors pinned to nodes by custom resources."""

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
                ray.init(
                    address=address, namespace=NAMESPACE, log_to_driver=False,
                    logging_level="warning",
                )  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise HetdiffError(
                    f"no Ray cluster at {address} ({str(err).splitlines()[0]}); start one with "
                    "`ray start --head` or set RAY_ADDRESS"
                ) from None

    def submit(self, sub: ExpertSubmission) -> str:
        r = sub.resources
        if r.tasks > 1:
            raise HetdiffError(
                f"{sub.name} asks for {r.tasks} tasks; multi-process experts run under "
                "--launcher slurm or local: set tasks = 1 for Ray islands"
            )
        labels = {label: 1.0 for label in r.ray_resources}
        known = self._ray.cluster_resources()
        missing = [label for label in labels if label not in known]
        if missing:
            raise HetdiffError(
                f"{sub.name} asks for Ray resources {missing} that no node offers; start a node "
                f"with `ray start --resources '{{\"{missing[0]}\": 1}}'` or fix resources"
            )
        name, submission = actor_name(sub), uuid.uuid4().hex
        (sub.folder / RESULT_NAME).unlink(missing_ok=True)
        write_record(
            sub.folder, launcher=self.name, job_id=name, submission=submission, state=PENDING,
            node=None,
        )  # fmt: skip
        actor = self._ray.remote(ExpertActor).options(
            name=name, namespace=NAMESPACE, lifetime="detached", max_restarts=0,
            num_cpus=r.cpus, num_gpus=r.gpus, resources=labels,
        )  # fmt: skip
        actor.remote(str(sub.job_path), sub.threads, submission)
        return name

    def status(self, sub: ExpertSubmission) -> str | None:
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            actor = self._ray.get_actor(actor_name(sub), namespace=NAMESPACE)
        except ValueError:  # no live actor of that name
            actor = None
        if actor is not None:
            try:
                state, node = self._ray.get(actor.state.remote(), timeout=STATE_TIMEOUT_S)
            except GetTimeoutError:
                return PENDING  # not placed yet (its island is busy or not started)
            except RayActorError:
                pass  # it ended between the two calls: its result file says how
            else:
                if (read_record(sub.folder) or {}).get("node") != node:
                    write_record(sub.folder, node=node)
                return state
        result = read_result(sub)
        if result is None:
            return None  # never submitted, or lost with its node
        write_record(sub.folder, node=result.get("node"))
        return COMPLETED if result.get("exit_code") == 0 else FAILED
