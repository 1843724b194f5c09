"""Router checkpoints: ``router.safetensors`` with the ``RouterSpec`` as JSON metadata.

One file holds the router's weights (safetensors) and its self-description under the metadata
keys ``format`` = ``ROUTER_FORMAT`` and ``router_spec`` (``RouterSpec.to_json()``): the K and
fingerprint of the partition it was trained on, the data, its conditioning (none, class, text and
the text encoder), the network's ``RouterConfig`` and the steps trained. ``read_router_spec``
reads the spec after verifying the file; ``load_router`` rebuilds the network in eval mode.

The file is signed like every checkpoint (``hetdiff.experts.signed``: one sha256 over the
metadata and the tensors, key ``hetdiff_digest``, deterministic bytes). Routers written before
the digest carry none: they load only with ``trust_unsigned`` (``--trust-unsigned``). The
network's parameter shapes (built on the meta device) are checked against the header's tensor
shapes before the router is allocated.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import hetdiff
from hetdiff.errors import HetdiffError
from hetdiff.experts import signed
from hetdiff.models.router import CONDITIONINGS, Router, RouterConfig
from hetdiff.models.router_transformer import TransformerRouter, TransformerRouterConfig

ROUTER_FILENAME = "router.safetensors"
ROUTER_FORMAT = "hetdiff-router/1"
# RouterSpec.arch -> (config type, network): the FiLM conv router or the transformer router
ROUTER_ARCHS = {"film": (RouterConfig, Router),
                "transformer": (TransformerRouterConfig, TransformerRouter)}  # fmt: skip
# Bounds on what a router spec read from a file may ask to allocate.
_MODEL_LIMITS = {"num_clusters": 100_000, "resolution": 8192, "channels": 256, "hidden": 65_536,
                 "depth": 1024, "num_classes": 1_000_000, "context_dim": 65_536,
                 "hidden_size": 65_536, "num_heads": 65_536, "patch_size": 8192}  # fmt: skip


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
    model: dict[str, Any]  # RouterConfig.to_dict() (TransformerRouterConfig's for "transformer")
    steps: int = 0  # optimizer steps trained
    arch: str = "film"  # "film" (models/router.py) | "transformer" (models/router_transformer.py)
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
        for name, high in _MODEL_LIMITS.items():  # before anything is built from them
            value = self.model.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high
            ):
                raise HetdiffError(
                    f"router spec model.{name} must be an integer in [0, {high}], got {value!r}"
                )
        if not isinstance(self.arch, str) or self.arch not in ROUTER_ARCHS:
            raise HetdiffError(
                f"unknown router arch {self.arch!r}; use one of {', '.join(ROUTER_ARCHS)}"
            )
        try:
            config = self.config
        except TypeError as err:
            raise HetdiffError(f"router spec model is invalid ({err})") from None
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
        cls,
        config: RouterConfig | TransformerRouterConfig,
        partition_fingerprint: str,
        **fields: Any,
    ) -> RouterSpec:
        """A spec whose shape fields (and arch) are read from ``config``."""
        return cls(
            arch="transformer" if isinstance(config, TransformerRouterConfig) else "film",
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
    def config(self) -> RouterConfig | TransformerRouterConfig:
        """The network's architecture config (of its ``arch``), rebuilt from ``model``."""
        return ROUTER_ARCHS[self.arch][0].from_dict(self.model)

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
    """Write weights + spec, signed, to ``path`` (a file, or a directory that gets
    router.safetensors), atomically; identical inputs give identical bytes."""
    target = router_file(path)
    metadata = {"format": ROUTER_FORMAT, "router_spec": spec.to_json()}
    return signed.write_signed(target, state, metadata)


def _router_header(target: Path) -> tuple[RouterSpec, dict[str, str], dict[str, list]]:
    if not target.is_file():
        raise HetdiffError(
            f"no router checkpoint at {target}; train one with `hetdiff train-router --out DIR`"
        )
    try:
        metadata, shapes = signed.read_header(target, "router checkpoint")
    except HetdiffError as err:
        raise HetdiffError(f"router checkpoint {target} is unreadable ({err})") from None
    if metadata.get("format") != ROUTER_FORMAT or "router_spec" not in metadata:
        raise HetdiffError(f"{target} is not a hetdiff router checkpoint (no {ROUTER_FORMAT} spec)")
    try:
        spec = RouterSpec.from_json(metadata["router_spec"])
    except HetdiffError as err:
        raise HetdiffError(f"{target}: {err}") from None
    return spec, metadata, shapes


def _read_verified(
    path_or_dir: str | Path, trust_unsigned: bool | None
) -> tuple[RouterSpec, dict[str, Tensor]]:
    target = router_file(path_or_dir)
    spec, metadata, shapes = _router_header(target)
    with torch.device("meta"):
        net = ROUTER_ARCHS[spec.arch][1](spec.config)
        expected = {k: list(v.shape) for k, v in net.state_dict().items()}
    if expected != {k: list(v) for k, v in shapes.items()}:
        raise HetdiffError(
            f"router weights do not match its spec ({target}: the file's tensors are not the "
            "spec's network); use the file it was written as"
        )
    tensors = signed.read_tensors(target, "router checkpoint")
    signed.verify(target, tensors, metadata, "router checkpoint", trust_unsigned)
    return spec, tensors


def read_router_spec(path_or_dir: str | Path, trust_unsigned: bool | None = None) -> RouterSpec:
    """The spec of a router checkpoint, after verifying the file against its digest."""
    return _read_verified(path_or_dir, trust_unsigned)[0]


def load_router(
    path_or_dir: str | Path, device: torch.device | str = "cpu", trust_unsigned: bool | None = None
) -> tuple[Router | TransformerRouter, RouterSpec]:
    """Rebuild a router from its checkpoint; returns (router in eval mode on ``device``, spec).

    Verified first (digest; shapes against the spec before allocation); ``trust_unsigned``
    (default ``$HETDIFF_TRUST_UNSIGNED`` == "1") accepts a router written without a digest."""
    spec, state = _read_verified(path_or_dir, trust_unsigned)
    router = ROUTER_ARCHS[spec.arch][1](spec.config)
    try:
        router.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise HetdiffError(f"router weights do not match its spec ({first})") from None
    return router.to(device).eval(), spec
