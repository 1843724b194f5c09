"""The training loop: AdamW + warmup + clipping + EMA on Hugging Face Accelerate.

The loop knows nothing about objectives: it calls ``loss_fn(model, x0, labels, generator)`` and
minimizes the mean of the per-sample losses it returns. ``labels`` is what ``train`` was given,
sliced to the batch: None, one (B,) int64 column, or a tuple of (B,) int64 columns (the router's
cluster and condition ids). One code path runs single-process (CPU or GPU) and under
``torchrun`` / ``accelerate launch`` (DDP).

Batches. ``config.batch_size`` is the *global* batch of one optimizer step, split over
``grad_accum`` micro-steps and ``num_processes`` ranks: micro-batch j of the step's index block
is ``block[j*m:(j+1)*m]`` with m = batch_size / grad_accum, and rank r takes ``[r::world]`` of it.
The gradient is the mean over the whole global batch, whatever the split.

Determinism and resume. Epoch e visits ``randperm(N)`` drawn from a generator seeded by
(seed, e) and drops the incomplete tail; the (epoch, position) pair is saved. All randomness of
the loss comes from ``generator``, seeded by (seed, rank) on the training device and saved with
torch's global CPU/CUDA RNG states. A resumed run therefore continues bitwise like one that was
never stopped (same process count, same hardware); ``hetdiff.training.resume`` refuses a resume
with other math, precision, process count or data (a fingerprint of images and every column).
Streamed data (a ``BatchStream``) replaces the permutation, saves its own position in the
state and decodes only each rank's rows. Epochs, micro-batches: ``hetdiff.training.batches``.

Commit protocol. At every checkpoint the artifact (``on_checkpoint``: expert.safetensors,
router.safetensors, the student) is written first, then the resumable state is committed
(``latest.json``). A kill before the artifact or between the two leaves the previous committed
state, and the resumed run redoes those steps bitwise and rewrites the same artifact; a kill after
the commit leaves both complete. A resume of a finished state rewrites the artifact from the
committed EMA weights (byte-identical when the file was intact), so ``--resume`` never reports a
stale file. A folder whose first checkpoint was never committed (a step directory without
``latest.json``, stray ``*.tmp`` files) starts from step 0, on ``--resume`` too. Tests only:
``$HETDIFF_TEST_KILL_AT`` (``state.kill_point``) kills the process at one of these points.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

import hetdiff
from hetdiff.config import MIXED_PRECISION
from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_write_json, atomic_write_text
from hetdiff.training import state as state_io
from hetdiff.training.batches import (
    BatchStream,
    Targets,
    accumulate_gradients,
    check_inputs,
    derive_seed,
    epoch_permutation,
    lr_at,
    next_stream_batch,
    prepare_accelerator,
    resolve_mixed_precision,  # noqa: F401 (re-exported)
    warmup_factor,
)
from hetdiff.training.ema import EMA
from hetdiff.training.resume import check_resume, data_fingerprint, divergence_message, set_base_lr
from hetdiff.training.speed import compile_network, load_optimizer_state, make_adamw
from hetdiff.training.state import KILL_ENV, KILL_POINTS, kill_point  # noqa: F401 (re-exported)
from hetdiff.training.state_mirror import commit_and_push

LossFn = Callable[[nn.Module, Tensor, Targets, torch.Generator], Tensor]
"""loss_fn(model, x0 (B, C, H, W), labels, generator) -> per-sample loss (B,).

``labels``: None, a (B,) int64 column, or a tuple of (B,) int64 columns, as given to ``train``.
All randomness (noise, t, label dropout) must come from ``generator``, which the loop owns."""

STATE_DIRNAME = "train_state"
LOG_NAME = "log.jsonl"
DIVERGE_ENV = "HETDIFF_TEST_DIVERGE_AT"  # tests: "STEP" makes that step's loss nan


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings. Defaults live here only."""

    steps: int = 1000  # optimizer steps in total (a resume trains up to this count)
    batch_size: int = 64  # global batch per optimizer step (all processes x micro-steps)
    lr: float = 3e-4  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW moment decays
    warmup_steps: int = 100  # linear warmup: step k (0-based) uses lr * min(1, (k+1)/warmup)
    grad_clip: float = 1.0  # max global gradient L2 norm; 0 disables clipping
    ema_decay: float = 0.999  # EMA decay of the weights
    ema_warmup: bool = True  # EMA decay min(ema_decay, (1+n)/(10+n)) after n updates
    grad_accum: int = 1  # micro-steps per optimizer step
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" | "auto" (bf16 where supported)
    checkpoint_every: int = 500  # steps between resumable states (and on_checkpoint calls)
    log_every: int = 10  # steps between JSONL log lines
    seed: int = 0  # seeds data order, loss noise and torch's global RNG
    progress: bool = True  # tqdm bar on the main process
    compile: bool = False  # torch.compile the network in place + fused AdamW (training.speed)

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HetdiffError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise HetdiffError(f"lr must be a positive number, got {self.lr!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise HetdiffError(
                "warmup_steps, weight_decay and grad_clip must be >= 0, got "
                f"{self.warmup_steps}, {self.weight_decay}, {self.grad_clip}"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise HetdiffError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))
        if not 0.0 <= self.ema_decay <= 1.0:
            raise HetdiffError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise HetdiffError(
                f"unknown mixed_precision {self.mixed_precision!r}; use one of {MIXED_PRECISION}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (betas as a list)."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass
class TrainResult:
    """What ``train`` hands back; the trained model itself is updated in place."""

    steps: int
    final_loss: float
    ema_state: dict[str, Tensor] = field(repr=False)
    log_path: Path


class TrainingDivergedError(HetdiffError):
    """The loss or gradient became nan/inf; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    images: Tensor | BatchStream,
    labels: Targets,
    loss_fn: LossFn,
    config: TrainConfig,
    out_dir: str | Path,
    on_checkpoint: Callable[[dict[str, Tensor], int], None] | None = None,
    resume: bool = False,
    accelerator: Accelerator | None = None,
    allow_lr_change: bool = False,
    state_url: str | None = None,
) -> TrainResult:
    """Train ``model`` in place to ``config.steps`` optimizer steps; return the EMA weights.

    images: (N, C, H, W) float; labels: None, (N,) int64, or a tuple of (N,) int64 columns; on
    CPU (batches move to the device). ``loss_fn`` gets each batch's rows of every column, in the
    same structure; the data fingerprint a resume checks covers the images and every column.
    ``images`` may instead be a ``BatchStream`` (labels None): each step takes its next global
    batch, and its position is saved with the state and restored on resume.
    Writes ``out_dir/log.jsonl`` (step, loss, lr, images_per_s, elapsed_s), the resolved config
    ``out_dir/train_config.json`` and the resumable state ``out_dir/train_state/`` every
    ``checkpoint_every`` steps and at the end, after calling ``on_checkpoint(ema_state_cpu,
    step)`` on the main process (the artifact first, then the state: module docstring).
    ``resume=True`` continues bitwise from the last committed state (``allow_lr_change``: with
    ``config.lr`` in place of the saved lr from there on, e.g. after a divergence).
    ``state_url``: each committed state is also uploaded there (``training.state_mirror``).
    ``out_dir`` must be on a filesystem every process sees. Raises TrainingDivergedError when
    the loss or gradient norm becomes nan/inf (the last good state is kept).
    """
    out_dir = Path(out_dir)
    state_root = out_dir / STATE_DIRNAME
    log_path = out_dir / LOG_NAME
    accelerator, precision = prepare_accelerator(config, accelerator)
    stream = images if isinstance(images, BatchStream) else None
    world, rank, is_main = (
        accelerator.num_processes,
        accelerator.process_index,
        accelerator.is_main_process,
    )
    check_inputs(images, labels, config.batch_size, config.grad_accum, world)
    device = accelerator.device

    manifest = state_io.read_manifest(state_root)
    if resume and manifest is None:
        if not state_root.is_dir():
            raise HetdiffError(f"nothing to resume in {state_root}; run without --resume to start")
        if is_main:  # killed while its first checkpoint was written: nothing was committed
            print(f"no committed checkpoint in {state_root}; starting from step 0", flush=True)
        resume = False
    if is_main:  # leftovers of a killed run: temporary files, step folders no manifest names
        state_io.clean_uncommitted(out_dir, state_root, manifest)
    accelerator.wait_for_everyone()
    if not resume and manifest is not None:
        raise HetdiffError(
            f"{out_dir} already holds training state at step {manifest['step']}; pass --resume "
            "to continue it or choose a new output directory"
        )

    optimizer = make_adamw(model.parameters(), config.lr, config.betas, config.weight_decay,
                           fused=config.compile, device=device)  # fmt: skip
    scheduler = LambdaLR(optimizer, partial(warmup_factor, warmup_steps=config.warmup_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    if config.compile:  # in place: the EMA, states and checkpoints keep the plain keys
        compile_network(raw_model)
    ema = EMA(raw_model, config.ema_decay, config.ema_warmup)
    noise = torch.Generator(device=device)
    fingerprint = data_fingerprint(images, labels)

    step, epoch, position, elapsed_before, last_loss = 0, 0, 0, 0.0, math.nan
    last_good: int | None = None
    if resume:
        saved = state_io.load_train_state(state_root, rank)
        meta = saved.meta
        check_resume(
            meta, config.to_dict(), config.steps, precision, world, fingerprint, saved.directory,
            allow_lr_change=allow_lr_change,
        )  # fmt: skip
        try:
            raw_model.load_state_dict(saved.model, strict=True)
        except RuntimeError as err:
            first_line = str(err).splitlines()[0]
            raise HetdiffError(
                f"cannot resume: the model differs from the saved one ({first_line})"
            ) from err
        ema.load_state_dict(saved.ema, meta["ema_num_updates"])
        load_optimizer_state(optimizer, saved.optimizer)  # this run's AdamW implementation
        scheduler.load_state_dict(meta["scheduler"])
        if meta["config"]["lr"] != config.lr:  # allowed by check_resume: the new lr from here
            set_base_lr(optimizer, scheduler, config.lr, lr_at(scheduler.last_epoch, config))
        if accelerator.scaler is not None and meta.get("grad_scaler") is not None:
            accelerator.scaler.load_state_dict(meta["grad_scaler"])
        state_io.restore_rng(saved.rng, noise)
        step, epoch, position = saved.step, meta["epoch"], meta["position"]
        if stream is not None:
            stream.load_state_dict(meta["stream"])
        elapsed_before, last_loss, last_good = meta["elapsed_s"], meta["last_loss"], saved.step
        if is_main:
            state_io.trim_log(log_path, step)
    else:
        torch.manual_seed(derive_seed(config.seed, "torch", rank))
        noise.manual_seed(derive_seed(config.seed, "noise", rank))
        if is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(log_path, "")
    if is_main:
        resolved = {**config.to_dict(), "mixed_precision_resolved": precision, "world_size": world}
        atomic_write_json(out_dir / "train_config.json", resolved)
    accelerator.wait_for_everyone()

    def save_state() -> None:
        directory = state_io.step_dir(state_root, step)
        if is_main:
            state_io.prepare_step_dir(state_root, step)
        accelerator.wait_for_everyone()
        state_io.write_rank_state(directory, rank, state_io.capture_rng(noise))
        if is_main:
            scaler = accelerator.scaler
            meta = {
                "step": step,
                "epoch": epoch,
                "position": position,
                **({} if stream is None else {"stream": stream.state_dict()}),
                "ema_num_updates": ema.num_updates,
                "scheduler": state_io.flatten_tree(scheduler.state_dict())[0],
                "grad_scaler": None if scaler is None else scaler.state_dict(),
                "config": config.to_dict(),
                "mixed_precision": precision,
                "world_size": world,
                "data_fingerprint": fingerprint,
                "elapsed_s": elapsed_before + (time.perf_counter() - start),
                "last_loss": last_loss,
                "hetdiff_version": hetdiff.__version__,
            }
            state_io.write_shared_state(
                directory,
                model=raw_model.state_dict(),
                ema=ema.state_dict(),
                optimizer=optimizer.state_dict(),
                meta=meta,
            )
        accelerator.wait_for_everyone()
        kill_point("in-state", step, out_dir)
        if is_main:
            commit_and_push(state_root, step, world, state_url)  # state_url None: commit only
        accelerator.wait_for_everyone()

    def write_artifact() -> None:
        if on_checkpoint is not None and is_main:
            on_checkpoint(_cpu_clone(ema.state_dict()), step)
        accelerator.wait_for_everyone()

    def diverged(what: str, value: float) -> TrainingDivergedError:
        return TrainingDivergedError(divergence_message(what, value, step + 1, last_good,
                                                        state_root, config.lr))  # fmt: skip

    num_items = len(images)
    order = epoch_permutation(0 if stream is not None else num_items, config.seed, epoch)
    bar = tqdm(
        total=config.steps,
        initial=step,
        desc="train",
        disable=not (config.progress and is_main),
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    if resume and step == config.steps:  # finished before: re-derive the artifact from the state
        write_artifact()
    try:
        model.train()
        while step < config.steps:
            step_images, step_labels = images, labels
            if stream is not None:  # the stream owns the order (hetdiff.data.shard_stream)
                step_images, step_labels, block = next_stream_batch(
                    stream, config.batch_size, config.grad_accum, world, rank
                )
            else:
                if position + config.batch_size > num_items:
                    epoch, position = epoch + 1, 0
                    order = epoch_permutation(num_items, config.seed, epoch)
                block = order[position : position + config.batch_size]
                position += config.batch_size

            step_loss = accumulate_gradients(
                model, step_images, step_labels, block, loss_fn, noise, config.grad_accum,
                accelerator,
            )  # fmt: skip
            loss_value = float(step_loss)
            if os.environ.get(DIVERGE_ENV) == str(step + 1):  # tests: a divergence on demand
                loss_value = math.nan
            if not math.isfinite(loss_value):
                raise diverged("loss", loss_value)
            max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_norm))
            if not math.isfinite(grad_norm) and accelerator.scaler is None:
                raise diverged("gradient norm", grad_norm)
            lr_used = optimizer.param_groups[0]["lr"]
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(raw_model)
            step += 1
            last_loss = loss_value
            window_loss, window_steps = window_loss + loss_value, window_steps + 1
            bar.update(1)

            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                window_images = window_steps * config.batch_size
                record = {
                    "step": step,
                    "loss": window_loss / window_steps,  # mean over the steps since last line
                    "lr": lr_used,
                    "images_per_s": window_images / max(now - window_start, 1e-9),
                    "elapsed_s": elapsed_before + (now - start),
                }
                if is_main:
                    with open(log_path, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{lr_used:.3g}")
                window_loss, window_steps, window_start = 0.0, 0, now

            if step % config.checkpoint_every == 0 or step == config.steps:
                kill_point("before-artifact", step, out_dir)
                write_artifact()  # the artifact first: a committed state never outruns it
                kill_point("after-artifact", step, out_dir)
                save_state()
                last_good = step
                kill_point("after-state", step, out_dir)
    finally:
        bar.close()
    return TrainResult(
        steps=step,
        final_loss=last_loss,
        ema_state=_cpu_clone(ema.state_dict()),
        log_path=log_path,
    )


def _cpu_clone(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
