"""The network of an expert whose spec names a diffusers class: built with diffusers' own class.

A spec with ``model = {"arch": "diffusers", "class": "UNet2DModel", "config": {...}}`` (the
model's ``config.json``) stores the diffusers module's own ``state_dict`` in its checkpoint;
``experts/store.py`` checks the header's shapes against ``diffusers_shapes`` (a module built on
the meta device) and builds the network with ``diffusers_net``. Written by
``experts/diffusers_import.py`` and ``experts/diffusers_export.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.experts.spec import ExpertSpec
from hetdiff.models.diffusers_net import DiffusersNet, build_diffusers_module

DIFFUSERS_ARCH = "diffusers"


def is_diffusers_spec(spec: ExpertSpec) -> bool:
    """True when the spec's network is a diffusers class (``model["arch"] == "diffusers"``)."""
    return spec.model.get("arch") == DIFFUSERS_ARCH


def diffusers_model_dict(class_name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's ``model`` entry for a diffusers module of ``class_name`` with ``config``."""
    return {"arch": DIFFUSERS_ARCH, "class": class_name, "config": dict(config)}


def model_side(config: Mapping[str, Any], where: str = "config.json") -> int:
    """The square input side of a diffusers config (``sample_size`` int or [H, W] with H = W)."""
    size = config.get("sample_size")
    if isinstance(size, list | tuple):
        if len(size) != 2 or size[0] != size[1]:
            raise HetdiffError(f"{where}: sample_size {size!r} is not square; hetdiff needs H = W")
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise HetdiffError(f"{where}: sample_size must be a positive integer, got {size!r}")
    return size


def out_channels_of(config: Mapping[str, Any]) -> int:
    """Output channels: ``out_channels``, or ``in_channels`` when it is null (DiT, PixArt)."""
    out = config.get("out_channels")
    return int(config["in_channels"] if out is None else out)


def _class_and_config(spec: ExpertSpec, where: str) -> tuple[str, dict[str, Any]]:
    name, config = spec.model.get("class"), spec.model.get("config")
    if not isinstance(name, str) or not isinstance(config, dict):
        raise HetdiffError(
            f"{where}: a diffusers expert's model needs 'class' (a diffusers class name) and "
            "'config' (its config.json); re-import it with `hetdiff import-expert`"
        )
    pairs = (
        ("resolution", spec.resolution, "sample_size", model_side(config, where)),
        ("channels", spec.channels, "in_channels", config.get("in_channels")),
        (
            "learned_variance",
            spec.learned_variance,
            "out_channels == 2 x in_channels",
            out_channels_of(config) == 2 * int(config.get("in_channels") or 0),
        ),
    )
    for spec_name, spec_value, model_name, model_value in pairs:
        if spec_value != model_value:
            raise HetdiffError(
                f"{where}: spec {spec_name}={spec_value!r} disagrees with the diffusers config's "
                f"{model_name}={model_value!r}; fix the spec"
            )
    return name, config


def diffusers_shapes(spec: ExpertSpec, where: str | Path = "expert") -> dict[str, list[int]]:
    """{name: shape} of the spec's diffusers module, built on the meta device (no memory)."""
    name, config = _class_and_config(spec, str(where))
    with torch.device("meta"):
        module = build_diffusers_module(name, config)
    return {key: list(tensor.shape) for key, tensor in module.state_dict().items()}


def diffusers_net(
    spec: ExpertSpec, state: Mapping[str, Tensor], where: str | Path = "expert"
) -> DiffusersNet:
    """The spec's diffusers module with ``state`` loaded strictly, wrapped as ``net(x, t, cond)``."""
    name, config = _class_and_config(spec, str(where))
    module = build_diffusers_module(name, config)
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise HetdiffError(f"{where}: weights do not fit the {name} config ({first})") from None
    return DiffusersNet(module, name).eval()
