"""What the training loop feeds its loss: epochs, target columns and micro-batches.

The training data is ``images`` (N, C, H, W) float with ``targets``: None, one (N,) int64 column
(class labels, caption ids), or a tuple of (N,) int64 columns (the router's cluster ids and
condition ids). A batch slices every column with the same rows, so the loss receives the same
structure with B rows.

Epoch e visits ``randperm(N)`` drawn from a generator seeded by (seed, e); one optimizer step
takes the next ``batch_size`` indices and splits them over ``grad_accum`` micro-steps and
``world`` ranks: micro-step j on rank r takes ``block[j*m:(j+1)*m][r::world]``, m =
batch_size / grad_accum.

Streamed data (``BatchStream``, e.g. ``hetdiff.training.stream.StreamBatches`` over shards)
replaces the permutation: each optimizer step asks the stream for its next global batch and
splits it the same way; the stream's position is part of the saved training state. Every rank
reads the same samples, but a rank decodes only the rows it trains on (``next_stream_batch``):
with ``world`` ranks each decodes 1/world of the global batch, not all of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from hetdiff.errors import HetdiffError

Targets = Tensor | tuple[Tensor, ...] | None
"""None, one (N,) int64 column, or a tuple of (N,) int64 columns."""


@runtime_checkable
class BatchStream(Protocol):
    """Training data read as a stream instead of an (N, C, H, W) tensor.

    ``next_batch(B)`` gives the next global batch: images (B, C, H, W) float and its targets
    (None, (B,) int64 or a tuple of them). ``next_batch(B, keep)`` advances the stream by the
    same B samples but returns only rows ``keep`` (indices into the global batch, in that
    order): (len(keep), C, H, W) images and their targets, so a rank decodes only what it
    trains on. ``state_dict()`` / ``load_state_dict()`` save and restore the position as
    JSON-ready values, so a resumed run gets the same batches;
    ``fingerprint`` names the data (a resume refuses another); ``len()`` is the sample count.
    """

    fingerprint: str

    def __len__(self) -> int: ...

    def next_batch(
        self, size: int, keep: Sequence[int] | None = None
    ) -> tuple[Tensor, Targets]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, e.g. (seed, "noise", rank); stable across runs."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def epoch_permutation(num_items: int, seed: int, epoch: int) -> Tensor:
    """The visiting order of epoch ``epoch``: randperm from a generator seeded by (seed, epoch)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(num_items, generator=generator)


def target_columns(targets: Targets) -> tuple[Tensor | None, ...]:
    """The tensors a data fingerprint covers after the images: ``(None,)``, ``(column,)`` or the
    tuple itself (so one column hashes exactly as it always has)."""
    return targets if isinstance(targets, tuple) else (targets,)


def select_rows(targets: Targets, rows: Tensor, device: torch.device) -> Targets:
    """``targets`` restricted to ``rows`` (B,) on ``device``, in the same structure."""
    if targets is None:
        return None
    if isinstance(targets, tuple):
        return tuple(column[rows].to(device, non_blocking=True) for column in targets)
    return targets[rows].to(device, non_blocking=True)


def check_inputs(
    images: Tensor | BatchStream, targets: Targets, batch_size: int, grad_accum: int, world: int
) -> None:
    """One-line errors for data the loop cannot train on (shapes, dtypes, batch split); a
    ``BatchStream`` brings its own targets, so ``targets`` must then be None."""
    if isinstance(images, BatchStream):
        if targets is not None:
            raise HetdiffError("streamed data brings its own targets; pass labels=None")
        _check_split(len(images), batch_size, grad_accum, world)
        return
    if images.ndim != 4 or not images.is_floating_point():
        raise HetdiffError(
            f"images must be a float tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    n = images.shape[0]
    if isinstance(targets, tuple):
        if not targets:
            raise HetdiffError("a tuple of target columns needs at least one column")
        for i, column in enumerate(targets):
            if (
                not isinstance(column, Tensor)
                or column.shape != (n,)
                or column.dtype != torch.int64
            ):
                shown = (
                    f"{column.dtype} {tuple(column.shape)}"
                    if isinstance(column, Tensor)
                    else type(column).__name__
                )
                raise HetdiffError(f"target column {i} must be int64 of shape ({n},), got {shown}")
    elif targets is not None and (targets.shape != (n,) or targets.dtype != torch.int64):
        raise HetdiffError(
            f"labels must be int64 of shape ({n},), got {targets.dtype} {tuple(targets.shape)}"
        )
    _check_split(n, batch_size, grad_accum, world)


def _check_split(n: int, batch_size: int, grad_accum: int, world: int) -> None:
    split = world * grad_accum
    if batch_size % split:
        raise HetdiffError(
            f"batch_size {batch_size} is not divisible by processes x grad_accum = {split}"
        )
    if n < batch_size:
        raise HetdiffError(f"the data has {n} images, fewer than batch_size {batch_size}")


def rank_rows(batch_size: int, grad_accum: int, world: int, rank: int) -> Tensor:
    """The rows of a global batch of ``batch_size`` that rank ``rank`` of ``world`` trains on,
    in micro-step order: ``cat_j arange(B)[j*m:(j+1)*m][rank::world]``, m = B / grad_accum;
    (B / world,) int64."""
    micro = batch_size // grad_accum
    block = torch.arange(batch_size)
    return torch.cat([block[j * micro : (j + 1) * micro][rank::world] for j in range(grad_accum)])


def next_stream_batch(
    stream: BatchStream, batch_size: int, grad_accum: int, world: int, rank: int
) -> tuple[Tensor, Targets, Tensor]:
    """The stream's next global batch as this rank needs it: (images, targets, block).

    One process (``world`` 1) gets the whole batch and ``block = arange(B)``. With more ranks
    the stream decodes only ``rank_rows`` (B / world rows) and ``block`` (B,) maps each global
    row to its row in those images (-1 where another rank trains), so ``accumulate_gradients``'
    ``block[j*m:(j+1)*m][rank::world]`` picks exactly this rank's rows, as it would from the
    whole batch: the same training, 1/world of the decoding.
    """
    if world == 1:
        images, targets = stream.next_batch(batch_size)
        return images, targets, torch.arange(batch_size)
    keep = rank_rows(batch_size, grad_accum, world, rank)
    images, targets = stream.next_batch(batch_size, keep.tolist())
    if images.shape[0] != keep.numel():
        raise HetdiffError(
            f"the stream returned {images.shape[0]} rows for the {keep.numel()} kept rows of a "
            f"batch of {batch_size}; BatchStream.next_batch must honour keep"
        )
    block = torch.full((batch_size,), -1, dtype=torch.int64)
    block[keep] = torch.arange(keep.numel())
    return images, targets, block


def accumulate_gradients(
    model: nn.Module,
    images: Tensor,
    targets: Targets,
    block: Tensor,
    loss_fn: Callable[[nn.Module, Tensor, Targets, torch.Generator], Tensor],
    noise: torch.Generator,
    grad_accum: int,
    accelerator: Accelerator,
) -> Tensor:
    """Backpropagate one optimizer step's global batch ``block`` (indices) in micro-steps.

    Micro-step j takes rows ``block[j*m:(j+1)*m][rank::world]`` (m = len(block) / grad_accum)
    and backpropagates mean(loss) / grad_accum; DDP averages over ranks on the last micro-step
    only. Returns the step's loss (mean over the global batch) as a 0-d tensor.
    """
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    micro = block.shape[0] // grad_accum
    step_loss = torch.zeros((), device=device)
    for j in range(grad_accum):
        rows = block[j * micro : (j + 1) * micro][rank::world]
        x0 = images[rows].to(device, non_blocking=True)
        y = select_rows(targets, rows, device)
        last_micro = j == grad_accum - 1
        sync = contextlib.nullcontext() if last_micro else accelerator.no_sync(model)
        with sync:
            per_sample = loss_fn(model, x0, y, noise)
            if per_sample.shape != (x0.shape[0],):
                raise HetdiffError(
                    f"loss_fn must return a per-sample loss of shape ({x0.shape[0]},), got "
                    f"{tuple(per_sample.shape)}"
                )
            loss = per_sample.float().mean()
            accelerator.backward(loss / grad_accum)
        step_loss += loss.detach() / grad_accum
    if world > 1:
        step_loss = accelerator.reduce(step_loss, reduction="mean")
    return step_loss


def prepare_accelerator(config: Any, accelerator: Accelerator | None) -> tuple[Accelerator, str]:
    """The loop's Accelerator (a new one when None: CPU under torchrun when CUDA is absent)
    and the resolved precision, after checking it agrees with ``config`` (a ``TrainConfig``),
    ``$WORLD_SIZE`` and the loop's own gradient accumulation."""
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator is None:
        accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(config.mixed_precision),
            # Accelerate ignores torchrun on a machine without CUDA unless told cpu=True.
            cpu=launched_world > 1 and not torch.cuda.is_available(),
        )
    if accelerator.num_processes != launched_world:
        raise HetdiffError(
            f"launched with WORLD_SIZE={launched_world} but the Accelerator runs "
            f"{accelerator.num_processes} process(es); on CPU pass Accelerator(cpu=True)"
        )
    precision = resolve_mixed_precision(config.mixed_precision, accelerator.device)
    if accelerator.mixed_precision != precision:
        raise HetdiffError(
            f"mixed_precision {config.mixed_precision!r} resolves to {precision!r} but the given "
            f"Accelerator uses {accelerator.mixed_precision!r}; make them agree"
        )
    if accelerator.gradient_accumulation_steps != 1:
        raise HetdiffError(
            "pass gradient accumulation as TrainConfig.grad_accum, not to Accelerator"
        )
    return accelerator, precision


def warmup_factor(step: int, warmup_steps: int) -> float:
    """LR multiplier for optimizer step ``step`` (0-based): min(1, (step + 1) / warmup_steps)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def lr_at(step: int, config: Any) -> float:
    """The learning rate optimizer step ``step`` (0-based) uses: lr * warmup_factor (``config``:
    a ``TrainConfig``)."""
    return config.lr * warmup_factor(step, config.warmup_steps)


def resolve_mixed_precision(requested: str, device: torch.device | None = None) -> str:
    """ "auto" -> "bf16" on a CUDA device that supports it, else "no"; other values pass."""
    if requested != "auto":
        return requested
    on_cuda = (device is None or device.type == "cuda") and torch.cuda.is_available()
    return "bf16" if on_cuda and torch.cuda.is_bf16_supported() else "no"
