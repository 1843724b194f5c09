"""The experts stage of a run: each expert as its own job on a launcher (``hetdiff.launch``).

``launch_experts`` is what ``hetdiff run`` (all experts) and ``hetdiff launch-expert`` (one
expert, on its island) call: a finished expert is kept, an expert whose job is still pending or
running (submitted by an earlier driver) is followed, not resubmitted; the rest get a fresh
``expert-k/job.json`` (an ``ExpertJob``) and are submitted, resuming from their last committed
checkpoint. Experts that fail for good are named; with ``allow_missing`` they are returned
instead of raised. In a run rooted at a URL (``store_url``) each job also mirrors its committed
training state to ``<url>/experts/expert-k/train_state`` and resumes from there on a machine
whose work folder lacks it (``ExpertJob.state_url``, ``training.state_mirror``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from hetdiff.config import RunConfig
from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_path
from hetdiff.launch import ACTIVE, ExpertSubmission, committed_state, make_launcher
from hetdiff.launch.base import last_log_line
from hetdiff.pipeline.layout import RunLayout
from hetdiff.threads import threads_per_worker

CHECKPOINT_NAME = "expert.safetensors"  # the finished expert in expert-k/


def expert_finished(config: RunConfig, layout: RunLayout, k: int) -> bool:
    """True when ``expert-k/expert.safetensors`` verifies against its digest and records the
    requested steps: the training loop writes the final artifact before it commits the final
    state, so such a file is the finished expert whatever the state says."""
    from hetdiff.experts.store import read_spec

    ckpt = layout.expert(k) / CHECKPOINT_NAME
    if not ckpt.is_file():
        return False
    try:
        return read_spec(ckpt).steps == config.experts[k].steps
    except HetdiffError:
        return False


def expert_submission(
    config: RunConfig, layout: RunLayout, k: int, launcher: str, threads: int
) -> ExpertSubmission:
    """Expert ``k``'s job: ``threads`` threads here, its ``resources.cpus`` on an island."""
    resources = config.resources_of(k)
    remote_threads = threads if launcher == "local" else resources.cpus
    return ExpertSubmission(k, layout.expert(k) / "job.json", resources, remote_threads)


def write_expert_job(
    config: RunConfig, layout: RunLayout, k: int, store_url: str | None = None
) -> bool:
    """Write ``expert-k/job.json`` (an ``ExpertJob``: the run's settings for expert k with seed
    ``seed + k``, 4 checkpoints and the run's conditioning; with ``store_url``, the run's root
    URL, its ``state_url`` ``<store_url>/experts/expert-k/train_state``); returns whether it
    resumes from the work folder (a committed checkpoint; a partial first one starts over)."""
    from hetdiff.training.jobs import ExpertJob

    e = config.experts[k]
    folder = layout.expert(k)
    folder.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.replace(
        e,
        seed=config.seed + k,
        checkpoint_every=max(1, e.steps // 4),
        progress=False,
        class_conditional=config.class_conditional,
        text_encoder=config.text_encoder,
    )
    resume = committed_state(folder)
    state_url = None
    if store_url is not None:
        state_url = f"{store_url}/{layout.state_key(folder)}"
    job = ExpertJob(
        data=config.data, out=str(folder), settings=settings, resolution=config.resolution,
        partition=str(layout.partition), cluster=k, resume=resume, state_url=state_url,
    )  # fmt: skip
    with atomic_path(folder / "job.json") as tmp:
        tmp.write_text(job.to_json())
    return resume


def launch_experts(
    config: RunConfig,
    layout: RunLayout,
    launcher_name: str,
    indices: Iterable[int],
    allow_missing: bool = False,
    log: Callable[[str], None] = print,
    store_url: str | None = None,
) -> list[int]:
    """Train experts ``indices`` of the run in ``layout`` on the launcher ``launcher_name``
    (module docstring) and wait for them; returns the experts that failed for good (raised as
    one HetdiffError naming each unless ``allow_missing``). ``store_url``: the run's root when
    it is a URL (each job mirrors its training state under it)."""
    launcher = make_launcher(launcher_name, config.workers)
    threads = threads_per_worker(config.workers)  # the cores this run may use, shared
    followed = []
    for k in indices:
        if expert_finished(config, layout, k):
            log(f"expert {k}: finished before, kept")
            continue
        sub = expert_submission(config, layout, k, launcher_name, threads)
        if launcher.status(sub) in ACTIVE:
            log(f"expert {k}: its {launcher_name} job is queued or running, following it")
        else:
            if write_expert_job(config, layout, k, store_url):
                log(f"expert {k}: resuming from its last checkpoint")
            e = config.experts[k]
            log(f"expert {k}: {e.objective}/{e.prediction} {e.schedule or ''} "
                f"submitted to the {launcher_name} launcher")  # fmt: skip
            launcher.submit(sub)
        followed.append(sub)
    launcher.wait(followed, log=log)
    failures = {}
    for sub in followed:
        if expert_finished(config, layout, sub.index):
            log(f"expert {sub.index}: trained")
        else:
            failures[sub.index] = f"expert {sub.index}: {last_log_line(sub.folder)}"
    if failures and not allow_missing:
        raise HetdiffError(
            "; ".join(failures.values()) + f" (logs in {layout.experts}; rerun to resume, "
            "or pass --allow-missing to go on without them)"
        )
    for k, failure in failures.items():
        log(f"{failure}; missing: the ensemble goes on without cluster {k}")
    return sorted(failures)
