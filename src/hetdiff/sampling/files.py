"""Sample sets on disk: ``NAME.safetensors`` holding ``images`` (N, C, H, W) float32 and, when
the samples were drawn with class labels, ``labels`` (N,) int64; a strategy whose cost depends
on the data (nucleus) adds ``expert_usage`` (K,) float64. Written atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_write_bytes


@dataclass(frozen=True)
class SampleSet:
    """Generated images (N, C, H, W) in [-1, 1] (not clamped) and the labels (N,) they were drawn
    for (None: unconditional or caption-conditioned without labels)."""

    images: Tensor
    labels: Tensor | None = None
    # mean evaluations of each expert per sample per step while drawing (Ensemble.expert_usage)
    expert_usage: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise HetdiffError(f"samples must be (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels is not None and tuple(self.labels.shape) != (self.images.shape[0],):
            raise HetdiffError(
                f"labels must be ({self.images.shape[0]},) for {self.images.shape[0]} images, "
                f"got {tuple(self.labels.shape)}"
            )


def save_samples(path: str | Path, samples: SampleSet) -> Path:
    """Write ``samples`` to ``path`` (temp file + rename); returns the path."""
    tensors = {"images": samples.images.float().contiguous()}
    if samples.labels is not None:
        tensors["labels"] = samples.labels.contiguous()
    if samples.expert_usage is not None:
        tensors["expert_usage"] = samples.expert_usage.double().contiguous()
    path = Path(path)
    atomic_write_bytes(path, safetensors.torch.save(tensors))
    return path


def load_samples(path: str | Path) -> SampleSet:
    """Read a sample set written by ``save_samples``; one-line error when missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise HetdiffError(f"no samples at {path}; run the sample stage first")
    try:
        tensors = safetensors.torch.load_file(str(path))
    except Exception as err:  # safetensors raises its own types for corrupt files
        raise HetdiffError(f"samples file {path} is unreadable ({type(err).__name__})") from err
    if "images" not in tensors:
        raise HetdiffError(f"{path} holds no 'images' tensor; it is not a hetdiff sample set")
    return SampleSet(tensors["images"], tensors.get("labels"), tensors.get("expert_usage"))
