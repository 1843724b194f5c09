"""``hetdiff status RUN``: each expert's state, from its files and its launcher's record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hetdiff.config import RunConfig, build_settings
from hetdiff.errors import HetdiffError
from hetdiff.launch import COMPLETED, read_record
from hetdiff.pipeline.layout import RunLayout


def saved_config(layout: RunLayout, out: str | Path) -> RunConfig:
    """The ``RunConfig`` a run saved in ``layout.config``; a one-line error when ``out`` (as
    the user gave it) holds no run."""
    if not layout.config.is_file():
        raise HetdiffError(f"{out} holds no hetdiff run (no config.json); pass a run folder")
    values = json.loads(layout.config.read_text())
    if not values.get("resources"):  # saved as [] when the run used the defaults
        values.pop("resources", None)
    return build_settings(RunConfig, values)


def expert_states(out: str | Path) -> list[dict[str, Any]]:
    """One entry per expert of the run in ``out`` (a folder, or an fsspec URL whose config and
    experts are pulled into its work folder first): ``expert`` (k), ``launcher``, ``job_id``,
    ``state`` (``COMPLETED`` when its checkpoint verifies with all its steps; a Slurm job's live
    state; else the last recorded one, or ``NOT SUBMITTED``) and ``step`` (the last committed
    training step, here or, for a URL, in the store's mirrored training state: the later one;
    or None)."""
    from hetdiff.experts.store import read_spec
    from hetdiff.launch.base import ExpertSubmission
    from hetdiff.pipeline.run_store import open_run_root
    from hetdiff.training.loop import STATE_DIRNAME
    from hetdiff.training.state import MANIFEST_NAME, read_manifest

    folder, store = open_run_root(out)
    if store is not None:
        store.pull(prefixes=("config.json", "experts/"), log=lambda line: None)
    layout = RunLayout(folder)
    config = saved_config(layout, out)
    entries = []
    for k, expert in enumerate(config.experts):
        folder = layout.expert(k)
        record = read_record(folder) or {}
        state = record.get("state", "NOT SUBMITTED")
        if record.get("launcher") == "slurm":  # Slurm remembers its jobs: ask it
            from hetdiff.launch.slurm import SlurmLauncher

            sub = ExpertSubmission(k, folder / "job.json", config.resources_of(k), 1)
            state = SlurmLauncher().status(sub) or state
        try:
            manifest = read_manifest(folder / STATE_DIRNAME)
        except HetdiffError:
            manifest = None
        step = None if manifest is None else manifest.get("step")
        if store is not None:  # an island elsewhere mirrors its state there (state_mirror)
            key = f"{layout.state_key(folder)}/{MANIFEST_NAME}"
            step = max((s for s in (step, _store_step(store.store, key)) if s is not None),
                       default=None)  # fmt: skip
        ckpt = folder / "expert.safetensors"
        try:
            if ckpt.is_file() and read_spec(ckpt).steps == expert.steps:
                state = COMPLETED
        except HetdiffError:
            pass
        entries.append(
            {
                "expert": k,
                "launcher": record.get("launcher"),
                "job_id": record.get("job_id"),
                "state": state,
                "step": step,
                "steps": expert.steps,
            }
        )
    return entries


def _store_step(store: Any, key: str) -> int | None:
    """The step of the training-state manifest at ``key`` in the artifact store ``store``, or
    None when there is none (or it cannot be read: status never fails on a progress line)."""
    try:
        if not store.exists(key):
            return None
        step = json.loads(store.get_bytes(key)).get("step")
    except Exception:  # noqa: BLE001 - a missing or unreadable manifest shows as no step
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def print_status(out: str | Path) -> list[dict[str, Any]]:
    """Print one line per expert (``expert-k  launcher  job  state  step/steps``); return them."""
    entries = expert_states(out)
    for e in entries:
        step = "-" if e["step"] is None else e["step"]
        print(
            f"expert-{e['expert']}  {e['launcher'] or '-':6}  job {e['job_id'] or '-':>12}  "
            f"{e['state']:<13}  step {step}/{e['steps']}"
        )
    return entries
