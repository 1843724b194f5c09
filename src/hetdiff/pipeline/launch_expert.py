"""``hetdiff launch-expert RUN --expert K``: an island owner trains only their own expert.

The run at ``RUN`` (a folder, or an fsspec URL such as ``s3://bucket/run`` that every island and
the coordinator share) holds the config and the partition manifest; this trains expert ``K`` on
the chosen launcher (``local``, ``slurm`` or ``ray``, with the expert's own ``[[resources]]``),
exactly as ``hetdiff run`` would (``pipeline.expert_jobs.launch_experts``: a finished expert is
kept, a queued or running job followed), and puts its checkpoint, log and metrics under ``RUN``.
A later ``hetdiff run`` on ``RUN`` keeps it and trains only the experts still missing.

Given a config (``config_path``, ``preset``) and a ``RUN`` that holds no run yet, the cluster
stage runs first (deterministic from the config: every island that starts it writes the same
partition); given none, the config saved in ``RUN`` is used.
"""

from __future__ import annotations

import time
from pathlib import Path

from hetdiff.config import LAUNCHERS, load_config
from hetdiff.errors import HetdiffError
from hetdiff.pipeline.expert_jobs import CHECKPOINT_NAME, launch_experts
from hetdiff.pipeline.layout import RunLayout
from hetdiff.pipeline.run import Run
from hetdiff.pipeline.run_store import open_run_root
from hetdiff.pipeline.status import saved_config


def _log(message: str) -> None:
    print(f"[hetdiff launch-expert {time.strftime('%H:%M:%S')}] {message}", flush=True)


def launch_expert(
    run: str | Path,
    expert: int,
    launcher: str = "local",
    config_path: str | Path | None = None,
    preset: str | None = None,
) -> str:
    """Train expert ``expert`` (k, from 0) of the run at ``run`` on ``launcher`` and wait for
    it; returns where its checkpoint is (``RUN/experts/expert-k/expert.safetensors``). One-line
    errors for a run without config, an expert index out of range, or a failed job."""
    if launcher not in LAUNCHERS:
        raise HetdiffError(f"unknown launcher {launcher!r}; use {', '.join(LAUNCHERS)}")
    folder, store = open_run_root(run)
    if store is not None:  # only what this expert needs, not the other islands' files
        prefixes = ("config.json", "partition.json", "stages/", f"experts/expert-{expert}/")
        store.pull(prefixes=prefixes, log=_log)
    layout = RunLayout(folder)
    if config_path is None and preset is None:
        config = saved_config(layout, run)
    else:
        config = load_config(config_path, preset=preset)
    count = len(config.experts)
    if not 0 <= expert < count:
        raise HetdiffError(f"--expert {expert}: the run has {count} experts, 0 to {count - 1}")
    pipeline = Run(config, run, launcher=launcher)
    pipeline.check_folder()
    folder.mkdir(parents=True, exist_ok=True)
    if not layout.config.is_file():
        from hetdiff.io import atomic_write_json

        atomic_write_json(layout.config, config.to_dict())
    if not pipeline.done("cluster"):
        _log("stage cluster: start (the partition every island trains on)")
        pipeline.stage_cluster()
        pipeline.mark("cluster")
    pipeline.push()
    try:
        store_url = None if store is None else store.url
        launch_experts(config, layout, launcher, [expert], log=_log, store_url=store_url)
    finally:
        pipeline.push()
    where = f"{store.url}/experts/expert-{expert}" if store else str(layout.expert(expert))
    return f"{where}/{CHECKPOINT_NAME}"
