"""Router checkpoints: ``router.safetensors`` with the ``RouterSpec`` as JSON metadata.

One file holds the router's weights (safetensors) and its self-description under the metadata
keys ``format`` = ``ROUTER_FORMAT`` and ``router_spec`` (``RouterSpec.to_json()``): the K and
fingerprint of the partition it was trained on, the data, its conditioning (none, class, text and
the text encoder), the network's ``RouterConfig`` and the steps trained. ``read_router_spec``
reads the spec without the weights; ``load_router`` rebuilds the network in eval mode.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

import hetdiff
from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_write_bytes
from hetdiff.models.router import CONDITIONINGS, Router, RouterConfig

ROUTER_FILENAME = "router.safetensors"
ROUTER_FORMAT = "hetdiff-router/1"


@dataclass(frozen=True, kw_only=True)
class RouterSpec:
    """Self-description of a router checkpoint, stored as JSON in its safetensors metadata."""

    num_clusters: int  # K of the partition it was trained on
    partition_fingerprint: str  # Partition.fingerprint: experts must come from the same split
    data_fingerprint: str = ""  # the training data set's fingerprint
    data_spec: str = ""  # how the data was named
    resolution: int
    channels: int
    num_classes: int = 0
    conditioning: str = "none"  # "none" | "class" | "text"
    text_encoder: str | None = None  # text routers: the encoder of their captions (hash, minilm)
    model: dict[str, Any]  # RouterConfig.to_dict()
    steps: int = 0  # optimizer steps trained
    hetdiff_version: str = hetdiff.__version__

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise HetdiffError(
                f"unknown router conditioning {self.conditioning!r}; use one of {CONDITIONINGS}"
            )
        if not isinstance(self.partition_fingerprint, str) or not self.partition_fingerprint:
            raise HetdiffError("a router spec needs the partition_fingerprint it was trained on")
        if not isinstance(self.model, dict):
            raise HetdiffError(f"router spec model must be a RouterConfig dict, got {self.model!r}")
        config = RouterConfig.from_dict(self.model)
        for name in ("num_clusters", "resolution", "channels", "num_classes"):
            if getattr(self, name) != getattr(config, name):
                raise HetdiffError(
                    f"router spec {name}={getattr(self, name)!r} disagrees with its model config "
                    f"({getattr(config, name)!r})"
                )
        if self.conditioning != config.conditioning:
            raise HetdiffError(
                f"router spec conditioning {self.conditioning!r} disagrees with its model "
                f"config ({config.conditioning!r})"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise HetdiffError(f"router spec steps must be an integer >= 0, got {self.steps!r}")
        if self.text_encoder is not None and (
            not isinstance(self.text_encoder, str) or not self.text_encoder
        ):
            raise HetdiffError(
                f"router spec text_encoder must be a non-empty string or null, got "
                f"{self.text_encoder!r}"
            )
        if self.text_encoder is not None and self.conditioning != "text":
            raise HetdiffError(
                f"router spec names text encoder {self.text_encoder!r} but its conditioning is "
                f"{self.conditioning!r}; only a text router (context_dim set) has an encoder"
            )

    @classmethod
    def for_config(
        cls, config: RouterConfig, partition_fingerprint: str, **fields: Any
    ) -> RouterSpec:
        """A spec whose shape fields are read from ``config``."""
        return cls(
            num_clusters=config.num_clusters,
            partition_fingerprint=partition_fingerprint,
            resolution=config.resolution,
            channels=config.channels,
            num_classes=config.num_classes,
            conditioning=config.conditioning,
            model=config.to_dict(),
            **fields,
        )

    @property
    def config(self) -> RouterConfig:
        """The network's architecture config, rebuilt from ``model``."""
        return RouterConfig.from_dict(self.model)

    def to_json(self) -> str:
        """Sorted-key JSON of every field (the ``router_spec`` metadata value)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> RouterSpec:
        """Inverse of ``to_json``; invalid JSON, unknown or missing keys are one-line errors."""
        try:
            d = json.loads(text)
        except ValueError as err:
            raise HetdiffError(f"router spec is not valid JSON ({err})") from err
        if not isinstance(d, dict):
            raise HetdiffError(f"a router spec must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HetdiffError(f"unknown router spec keys {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as err:
            raise HetdiffError(f"router spec is incomplete ({err})") from err


def router_file(path_or_dir: str | Path) -> Path:
    """``DIR/router.safetensors`` for a directory, else the path itself."""
    path = Path(path_or_dir)
    return path / ROUTER_FILENAME if path.is_dir() else path


def save_router(path: str | Path, state: dict[str, Tensor], spec: RouterSpec) -> Path:
    """Write weights + spec to ``path`` (a file, or a directory that gets router.safetensors)."""
    target = router_file(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"format": ROUTER_FORMAT, "router_spec": spec.to_json()}
    atomic_write_bytes(target, safetensors.torch.save(tensors, metadata=metadata))
    return target


def read_router_spec(path_or_dir: str | Path) -> RouterSpec:
    """The spec of a router checkpoint, without loading its weights."""
    target = router_file(path_or_dir)
    if not target.is_file():
        raise HetdiffError(
            f"no router checkpoint at {target}; train one with `hetdiff train-router --out DIR`"
        )
    try:
        with safetensors.safe_open(str(target), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise HetdiffError(
            f"router checkpoint {target} is unreadable ({type(err).__name__})"
        ) from err
    if metadata.get("format") != ROUTER_FORMAT or "router_spec" not in metadata:
        raise HetdiffError(f"{target} is not a hetdiff router checkpoint (no {ROUTER_FORMAT} spec)")
    return RouterSpec.from_json(metadata["router_spec"])


def load_router(
    path_or_dir: str | Path, device: torch.device | str = "cpu"
) -> tuple[Router, RouterSpec]:
    """Rebuild a router from its checkpoint; returns (router in eval mode on ``device``, spec)."""
    spec = read_router_spec(path_or_dir)
    router = Router(spec.config)
    state = safetensors.torch.load_file(str(router_file(path_or_dir)))
    try:
        router.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise HetdiffError(f"router weights do not match its spec ({first})") from err
    return router.to(device).eval(), spec
