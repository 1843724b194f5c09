"""Forms of the DiT block's linear layers that ``torch.compile`` turns into faster CPU code.

The math is the block's (``F.linear``, the tanh GELU); only where the bias is added and how its
gradient is reduced change, so the compiled step equals the eager one to float32 rounding:

- ``F.linear`` lowers to aten's ``addmm``, which first copies the bias into every row of the
  output and then runs the GEMM on top of it: one more write and read of the whole output. Here
  the GEMM is a plain ``mm`` and the bias is added inside the pointwise kernel inductor fuses
  after it (the GELU, or the block's gated residual).
- The bias gradient is the column sum of the output gradient. Inductor's one-stage column
  reduction walks each 16-column strip down all rows, a strided pass that misses the cache once
  the gradient outgrows it; ``column_sum`` sums groups of 64 rows first, then the groups.
- ``linear_gelu_tanh`` is an autograd function: its backward recomputes the GELU's derivative
  from the GEMM output and the bias, so inductor is free to save either and fuses the derivative,
  the product with the incoming gradient and the bias gradient into few loops.

Measured in issue 19 (``benchmarks/dit_train_step.py --fast``); used by ``dit_blocks`` only
while compiling for a CPU (``compiling_for_cpu``). Shapes: x (..., K), weight (N, K), bias (N,).
"""

from __future__ import annotations

import torch
from torch import Tensor

_TWO_SQRT_2_OVER_PI = 1.5957691216057308  # 2 * sqrt(2 / pi)
_CUBIC = 0.044715  # the tanh GELU's h^3 coefficient
_ROW_GROUP = 64  # rows summed per group by column_sum


def compiling_for_cpu(x: Tensor) -> bool:
    """True while ``torch.compile`` traces a graph whose tensor ``x`` lives on a CPU."""
    return torch.compiler.is_compiling() and x.device.type == "cpu"


def column_sum(g: Tensor) -> Tensor:
    """The sum of ``g`` (..., N) over every dimension but the last: (N,).

    Two-stage when the row count R is a multiple of 64 and at least 1024: (R / 64, 64, N) summed
    over the 64 rows of each group, then over the groups (equal to the one-stage sum to float
    rounding: the additions are only regrouped)."""
    rows = g.reshape(-1, g.shape[-1])
    count = rows.shape[0]
    if count % _ROW_GROUP or count < 16 * _ROW_GROUP:
        return rows.sum(0)
    return rows.view(count // _ROW_GROUP, _ROW_GROUP, -1).sum(1).sum(0)


def _sigmoid_argument(h: Tensor) -> Tensor:
    """z = 2u = 2 sqrt(2 / pi) (h + 0.044715 h^3): the tanh GELU is h sigmoid(z)."""
    return _TWO_SQRT_2_OVER_PI * (h + _CUBIC * h * h * h)


def gelu_tanh_as_sigmoid(h: Tensor) -> Tensor:
    """The tanh-approximate GELU written h * sigmoid(2u), u = sqrt(2 / pi) (h + 0.044715 h^3)
    (0.5 (1 + tanh u) = sigmoid(2u)); any shape."""
    return h * torch.sigmoid(_sigmoid_argument(h))


class _BiasGeluTanh(torch.autograd.Function):
    """(h0, bias) -> GELU_tanh(h0 + bias); backward: dh = g (s + h s (1 - s) dz/dh), s =
    sigmoid(z), dz/dh = 2 sqrt(2 / pi) (1 + 3 * 0.044715 h^2)."""

    @staticmethod
    def forward(ctx, h0: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(h0, bias)
        return gelu_tanh_as_sigmoid(h0 + bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        h0, bias = ctx.saved_tensors
        h = h0 + bias
        s = torch.sigmoid(_sigmoid_argument(h))
        dz = _TWO_SQRT_2_OVER_PI * (1 + 3 * _CUBIC * h * h)
        grad_h = grad * (s + h * s * (1 - s) * dz)
        return grad_h, column_sum(grad_h)


class _AddBias(torch.autograd.Function):
    """(y0, bias) -> y0 + bias (bias broadcast over rows); backward: (g, column_sum(g))."""

    @staticmethod
    def forward(ctx, y0: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        return y0 + bias

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return grad, column_sum(grad)


def linear_gelu_tanh(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """GELU_tanh(x W^T + b): (..., K) -> (..., N), the bias added in the GELU's kernel."""
    return _BiasGeluTanh.apply(torch.matmul(x, weight.t()), bias)


def linear_bias_apart(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x W^T + b: (..., K) -> (..., N), the bias added by the kernel that consumes the output."""
    return _AddBias.apply(torch.matmul(x, weight.t()), bias)
