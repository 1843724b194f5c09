"""The DiT's building blocks: modulation, attention, MLP, the transformer block and the final
layer (shapes: B = batch, N = patch tokens, D = hidden width, M = text tokens).

Each block modulates its LayerNorms with (shift, scale, gate) for attention and MLP: from its
own (6, D) table plus the shared ``t_block`` output (AdaLN-Single, PixArt-alpha), or from its own
SiLU -> Linear(D, 6D) of the conditioning c (adaLN-Zero, the original DiT). ``hetdiff.models.dit``
assembles them into the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hetdiff.models.compiled_cpu import (
    compiling_for_cpu,
    gelu_tanh_as_sigmoid,
    linear_bias_apart,
    linear_gelu_tanh,
)

#################################################################################
#                               Transformer block                               #
#################################################################################


def gelu_tanh(h: Tensor) -> Tensor:
    """GELU, tanh approximation (as DiT and PixArt): 0.5 h (1 + tanh(u)), u = sqrt(2 / pi) (h +
    0.044715 h^3); any shape.

    Eager: aten's kernel, bitwise what every checkpoint was trained with. Under ``torch.compile``
    on CPU, the same function written h * sigmoid(2u) (0.5 (1 + tanh u) = sigmoid(2u)): inductor
    fuses it, forward and backward, into loops of one ``exp`` where ``tanh`` costs a slower
    vectorized tanh: 2.4x faster forward + backward at (4096, 512) on 2 cores, equal to float32
    rounding (both forms 7.4e-7 from the float64 value on [-16, 16]).
    """
    if compiling_for_cpu(h):
        return gelu_tanh_as_sigmoid(h)
    return F.gelu(h, approximate="tanh")


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x * (1 + scale) + shift, with (B, N, D) x and (B, 1, D) shift/scale."""
    return torch.addcmul(shift, x, 1 + scale)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection; (B, N, D) -> (B, N, D).

    q, k and v are views of the qkv output taken as (B, N, heads, D/heads) slices, then
    transposed: the same strides as a permute of the whole (B, N, 3, heads, D/heads), but their
    gradients, which attention returns in (B, N, heads, D/heads) memory order, stack back into
    the qkv gradient in one copy (the permute's backward stacked, then copied again).
    """

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = (part.transpose(1, 2) for part in qkv.unbind(2))  # 3 x (B, heads, N, D/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D/heads)
        out = out.transpose(1, 2).reshape(B, N, D)
        if compiling_for_cpu(x):  # the bias joins the gated residual's kernel
            return linear_bias_apart(out, self.proj.weight, self.proj.bias)
        return self.proj(out)


class CrossAttention(nn.Module):
    """Multi-head attention from image tokens (B, N, D) to text keys (B, M, D) under a key mask."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, keys: Tensor, key_mask: Tensor) -> Tensor:
        B, N, D = x.shape
        M, heads = keys.shape[1], self.num_heads
        q = self.q(x).view(B, N, heads, D // heads).transpose(1, 2)  # (B, heads, N, D/heads)
        kv = self.kv(keys).view(B, M, 2, heads, D // heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, heads, M, D/heads)
        mask = key_mask[:, None, None, :]  # (B, 1, 1, M) bool, True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, N, D/heads)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear; (B, N, D) -> (B, N, D). Compiling for a CPU: the same
    math through ``compiled_cpu`` (biases added in the kernels that follow the GEMMs)."""

    def __init__(self, hidden_size: int, mlp_ratio: float):
        super().__init__()
        inner = int(hidden_size * mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, inner)
        self.fc2 = nn.Linear(inner, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        if compiling_for_cpu(x):  # biases added in the GELU's and the residual's kernels
            inner = linear_gelu_tanh(x, self.fc1.weight, self.fc1.bias)
            return linear_bias_apart(inner, self.fc2.weight, self.fc2.bias)
        return self.fc2(gelu_tanh(self.fc1(x)))


class DiTBlock(nn.Module):
    """One block: modulated self-attention, optional cross-attention, modulated MLP.

    AdaLN-Single: (6, D) table + the shared t0; adaLN-Zero: its own SiLU -> Linear(D, 6D) of c.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        context_dim: int | None = None,
        modulation: str = "adaln-single",
    ):
        super().__init__()
        D = hidden_size
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(D, num_heads)
        self.cross_attn = None
        if context_dim is not None:
            self.cross_attn = CrossAttention(D, num_heads)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(D, mlp_ratio)
        if modulation == "adaln-zero":
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        else:
            self.scale_shift_table = nn.Parameter(torch.randn(6, D) / D**0.5)  # (6, D)

    def forward(
        self, x: Tensor, t0: Tensor, keys: Tensor | None = None, key_mask: Tensor | None = None
    ) -> Tensor:
        """x (B, N, D), keys (B, M, D) -> (B, N, D). ``t0``: (B, 6, D) from the shared t_block
        (AdaLN-Single), or the conditioning c (B, D) (adaLN-Zero)."""
        if hasattr(self, "adaLN_modulation"):
            mod = self.adaLN_modulation(t0).view(x.shape[0], 6, -1)  # (B, 6, D)
        else:
            mod = self.scale_shift_table[None] + t0  # (B, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        x = torch.addcmul(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, keys, key_mask)  # PixArt: no norm, no modulation here
        x = torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x


#################################################################################
#                                 Final layer                                   #
#################################################################################


class FinalLayer(nn.Module):
    """(B, N, D) tokens and conditioning c (B, D) -> (B, N, P*P*C_out) patch values."""

    def __init__(
        self,
        hidden_size: int,
        patch_size: int,
        out_channels: int,
        modulation: str = "adaln-single",
    ):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        if modulation == "adaln-zero":
            self.adaLN_modulation = nn.Sequential(
                nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size)
            )
        else:
            self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if hasattr(self, "adaLN_modulation"):
            mod = self.adaLN_modulation(c).view(c.shape[0], 2, -1)  # (B, 2, D)
        else:
            mod = self.scale_shift_table[None] + c[:, None]  # (B, 2, D)
        shift, scale = mod.chunk(2, dim=1)  # (B, 1, D)
        return self.linear(modulate(self.norm(x), shift, scale))
