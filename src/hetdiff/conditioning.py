"""What a denoiser is conditioned on: class labels, text tokens, and their null forms.

A ``Conditioning`` is a frozen bundle of per-row tensors that travels beside ``x_t`` and ``t``.
Every field is optional and batch-first, so the ensemble can ``index`` rows per expert and
classifier-free guidance can ``cat`` a conditional and a ``null()`` batch into one forward pass.

Null forms (the "unconditional" input of classifier-free guidance):
- class labels: the value ``NULL_CLASS = -1``; the model maps it to its learned null embedding.
- text context: the tokens are kept (zeros) but ``context_mask`` is all False; the model then
  attends only to its learned null token, so the token values cannot leak into the output.

Label dropout for classifier-free training is done by the loss with ``drop_labels``, not by the
model, so a model's forward pass stays deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hetdiff.errors import HetdiffError

NULL_CLASS = -1
"""The class label meaning "no class" (the null condition of classifier-free guidance)."""


@dataclass(frozen=True)
class Conditioning:
    """Per-row conditions for a batch of ``B`` samples.

    Attributes:
        class_labels: (B,) int64 class ids in ``[0, num_classes)``, or ``NULL_CLASS`` (-1).
        context: (B, L, D) float text-token embeddings for cross-attention.
        context_mask: (B, L) bool, True = real token. ``None`` with a context means all real.
    """

    class_labels: Tensor | None = None
    context: Tensor | None = None
    context_mask: Tensor | None = None

    def __post_init__(self) -> None:
        labels, context, mask = self.class_labels, self.context, self.context_mask
        if labels is not None:
            if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32):
                raise HetdiffError(
                    f"class_labels must be a 1-D int64 tensor, got shape {tuple(labels.shape)} "
                    f"dtype {labels.dtype}; pass torch.tensor([...], dtype=torch.long)"
                )
        if context is not None and context.ndim != 3:
            raise HetdiffError(
                f"context must have shape (B, L, D), got {tuple(context.shape)}; "
                "add a token axis with context[:, None] for a single vector"
            )
        if mask is not None:
            if context is None:
                raise HetdiffError("context_mask was given without context; pass both or neither")
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(context.shape[:2]):
                raise HetdiffError(
                    f"context_mask must be bool of shape {tuple(context.shape[:2])} (B, L), got "
                    f"{mask.dtype} {tuple(mask.shape)}; use mask.bool() with True = real token"
                )
        # compared, not hashed into a set: under torch.compile a set of batch sizes would
        # specialize a dynamic batch size to its value (a recompile for every row count)
        if labels is not None and context is not None and labels.shape[0] != context.shape[0]:
            raise HetdiffError(
                f"class_labels has {len(labels)} rows but context has {len(context)}; "
                "give every condition the same batch size"
            )

    # ---------------------------------------------------------------- queries
    @property
    def batch_size(self) -> int | None:
        """Number of rows, or ``None`` when no condition is set."""
        for tensor in (self.class_labels, self.context):
            if tensor is not None:
                return len(tensor)
        return None

    def full_context_mask(self) -> Tensor | None:
        """(B, L) bool mask with ``None`` resolved to all True; ``None`` without a context."""
        if self.context is None:
            return None
        if self.context_mask is None:
            return torch.ones(self.context.shape[:2], dtype=torch.bool, device=self.context.device)
        return self.context_mask

    # ---------------------------------------------------------------- transforms
    def null(self) -> Conditioning:
        """The same batch with every condition replaced by its null form.

        Labels become ``NULL_CLASS``; the context becomes zeros with an all-False mask.
        """
        labels = None if self.class_labels is None else torch.full_like(self.class_labels, -1)
        context = mask = None
        if self.context is not None:
            context = torch.zeros_like(self.context)
            mask = torch.zeros(context.shape[:2], dtype=torch.bool, device=context.device)
        return Conditioning(class_labels=labels, context=context, context_mask=mask)

    def index(self, rows: Tensor) -> Conditioning:
        """Select rows (an int index tensor or a (B,) bool mask) from every condition."""
        return Conditioning(
            class_labels=None if self.class_labels is None else self.class_labels[rows],
            context=None if self.context is None else self.context[rows],
            context_mask=None if self.context_mask is None else self.context_mask[rows],
        )

    def cat(self, other: Conditioning) -> Conditioning:
        """Concatenate along the batch: rows of ``self`` first, then rows of ``other``.

        Both must set the same conditions. Contexts of different lengths are right-padded with
        zero tokens whose mask is False, so the padding is never attended to.
        """
        if (self.class_labels is None) != (other.class_labels is None) or (
            self.context is None
        ) != (other.context is None):
            raise HetdiffError(
                f"cannot cat conditionings with different fields ({self._fields()} vs "
                f"{other._fields()}); use .null() to build the unconditional half"
            )
        labels = None
        if self.class_labels is not None:
            labels = torch.cat([self.class_labels, other.class_labels])
        context = mask = None
        if self.context is not None:
            length = max(self.context.shape[1], other.context.shape[1])
            parts = [_pad_tokens(c.context, c.full_context_mask(), length) for c in (self, other)]
            context = torch.cat([p[0] for p in parts])
            mask = torch.cat([p[1] for p in parts])
        return Conditioning(class_labels=labels, context=context, context_mask=mask)

    def to(self, device: torch.device | str) -> Conditioning:
        """Move every condition to ``device``."""

        def move(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor.to(device)

        return Conditioning(move(self.class_labels), move(self.context), move(self.context_mask))

    def _fields(self) -> str:
        names = [n for n in ("class_labels", "context") if getattr(self, n) is not None]
        return "+".join(names) or "none"


def _pad_tokens(context: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Right-pad (B, L, D) tokens and their (B, L) mask to ``length`` with masked-out zeros."""
    missing = length - context.shape[1]
    if missing == 0:
        return context, mask
    pad = context.new_zeros(context.shape[0], missing, context.shape[2])
    pad_mask = mask.new_zeros(mask.shape[0], missing)
    return torch.cat([context, pad], dim=1), torch.cat([mask, pad_mask], dim=1)


def mean_of_real_tokens(
    context: Tensor, mask: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Mean over the real tokens (mask True; ``None`` = all real) of ``context`` (B, L, E), in
    ``dtype``: returns (pooled (B, E), count of real tokens (B, 1)); rows without a real token
    pool to 0 and count 0, for the caller to replace by its null vector."""
    if mask is None:
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
    weights = mask.to(dtype)[..., None]  # (B, L, 1)
    count = weights.sum(1)  # (B, 1)
    return (context.to(dtype) * weights).sum(1) / count.clamp(min=1), count


def drop_labels(labels: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``NULL_CLASS`` independently with probability ``p``.

    Training-time classifier-free dropout; called by the loss so the model stays deterministic.

    Args:
        labels: (B,) int64 class ids.
        p: drop probability in [0, 1].
        generator: random source; its device is used to draw the coin flips.

    Returns:
        (B,) int64 labels on ``labels.device``, a new tensor.
    """
    if not 0.0 <= p <= 1.0:
        raise HetdiffError(f"label drop probability must be in [0, 1], got {p}")
    device = labels.device if generator is None else generator.device
    coins = torch.rand(labels.shape, generator=generator, device=device).to(labels.device)
    return torch.where(coins < p, torch.full_like(labels, NULL_CLASS), labels)


def as_conditioning(cond: Conditioning | Tensor | None) -> Conditioning | None:
    """Normalize what callers pass as ``cond``: a plain integer tensor means class labels."""
    if cond is None or isinstance(cond, Conditioning):
        return cond
    if isinstance(cond, Tensor):
        if cond.dtype.is_floating_point or cond.dtype == torch.bool:
            raise HetdiffError(
                f"a bare {cond.dtype} tensor is not a condition; pass int64 class labels or "
                "Conditioning(context=..., context_mask=...) for text tokens"
            )
        return Conditioning(class_labels=cond.long())
    raise HetdiffError(
        f"cond must be a Conditioning, an int64 label tensor or None, got {type(cond).__name__}"
    )
