"""What a resumed run must share with the state it continues: optimization math, precision,
process count and data (a fingerprint of every training tensor).

A resume that differs in any of these would not continue the same optimization, so it is
refused with a one-line error naming the field and how to fix it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.training.batches import BatchStream, Targets, target_columns

# TrainConfig fields whose change alters the optimization; a resume must keep them.
RESUME_FIXED_FIELDS = (
    "batch_size",
    "lr",
    "weight_decay",
    "betas",
    "warmup_steps",
    "grad_clip",
    "ema_decay",
    "ema_warmup",
    "grad_accum",
    "seed",
)


def data_fingerprint(images: Tensor | BatchStream, targets: Targets) -> str:
    """sha256 over the shapes, dtypes and bytes of the training tensors (first 16 hex digits).

    Covers ``images`` and every target column in order; one column (or None) hashes exactly as
    before multi-column targets existed, so older training states still resume. A
    ``BatchStream`` is named by its own ``fingerprint`` (prefixed ``stream-``).
    """
    if isinstance(images, BatchStream):
        return f"stream-{images.fingerprint}"
    digest = hashlib.sha256()
    for tensor in (images, *target_columns(targets)):
        if tensor is None:
            digest.update(b"none")
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_resume(
    meta: dict[str, Any],
    config: dict[str, Any],
    steps: int,
    precision: str,
    world: int,
    fingerprint: str,
    directory: Path,
    allow_lr_change: bool = False,
) -> None:
    """Refuse to resume the state ``meta`` (from ``directory``) with another ``config`` (the
    ``TrainConfig.to_dict()`` of this run), precision, world size or data fingerprint, or when
    the state is already past ``steps``. ``allow_lr_change`` lets ``lr`` differ."""
    saved = meta["config"]
    for name in RESUME_FIXED_FIELDS:
        if name == "lr" and allow_lr_change:
            continue
        if saved.get(name) != config[name]:
            hint = " (or add --allow-lr-change to continue with the new lr)" if name == "lr" else ""
            raise HetdiffError(
                f"cannot resume: {name} is {config[name]!r} but the state in {directory} was "
                f"trained with {saved.get(name)!r}; pass the same {name}{hint} or start a new run"
            )
    if meta["mixed_precision"] != precision:
        raise HetdiffError(
            f"cannot resume: mixed_precision resolves to {precision!r} but the state was trained "
            f"with {meta['mixed_precision']!r}; pass --mixed-precision {meta['mixed_precision']}"
        )
    if meta["world_size"] != world:
        raise HetdiffError(
            f"cannot resume: the state in {directory} was trained by {meta['world_size']} "
            f"processes, this run has {world}; relaunch with {meta['world_size']}"
        )
    if meta["data_fingerprint"] != fingerprint:
        raise HetdiffError(
            f"cannot resume: the training data differs from the run in {directory} (fingerprint "
            f"{fingerprint} vs {meta['data_fingerprint']}); resume with the same data"
        )
    if meta["step"] > steps:
        raise HetdiffError(
            f"cannot resume: the state is at step {meta['step']}, beyond steps={steps}"
        )


def divergence_message(
    what: str, value: float, step: int, last_good: int | None, state_root: Path, lr: float
) -> str:
    """One line: what diverged, what was kept, and a command change that continues the run
    with a learning rate 10x lower (flags every training command has)."""
    lower = f"{lr / 10:g}"
    if last_good is None:
        return (
            f"{what} became {value} at step {step}; no checkpoint was written yet; rerun the "
            f"same command with a lower learning rate, e.g. --lr {lower} (now {lr:g})"
        )
    return (
        f"{what} became {value} at step {step}; last good checkpoint at step {last_good} kept "
        f"in {state_root}; continue from it with a lower learning rate: rerun the same command "
        f"with --resume --allow-lr-change --lr {lower} (now {lr:g})"
    )


def set_base_lr(optimizer: Any, scheduler: Any, lr: float, current_lr: float) -> None:
    """After loading a saved optimizer and LambdaLR: continue with base learning rate ``lr``
    (the schedule's factor keeps its position; ``current_lr`` = lr * factor at this step)."""
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = current_lr
