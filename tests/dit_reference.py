"""A small facebookresearch/DiT in the reference layout, shared by the import tests: random
weights under the reference's key names, its forward pass written out in float64, and inputs.
(Importable because pytest puts tests/ on sys.path.)"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# A small DiT in the reference layout: 8 px latents of 2 channels, patch 2, hidden 32, 2 blocks,
# 2 heads, 5 classes (+ the null row), learned sigma (4 output channels).
D, DEPTH, HEADS, P, C, SIDE, K = 32, 2, 2, 2, 2, 8, 5


def reference_pos_embed(dim: int, grid: int) -> np.ndarray:
    """The MAE / DiT 2-D sin-cos table, written from the reference's description (numpy)."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_w, grid_h = np.meshgrid(
        np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)
    )
    return np.concatenate([one_d(dim // 2, grid_w), one_d(dim // 2, grid_h)], axis=1)


def reference_state_dict(seed: int = 0, depth: int = DEPTH) -> dict[str, Tensor]:
    """Random weights under facebookresearch/DiT's key names and shapes (non-zero modulation)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> Tensor:
        return scale * torch.randn(*shape, generator=gen)

    n = (SIDE // P) ** 2
    state = {
        "pos_embed": torch.from_numpy(reference_pos_embed(D, SIDE // P)).float()[None],
        "x_embedder.proj.weight": rand(D, C, P, P),
        "x_embedder.proj.bias": rand(D),
        "t_embedder.mlp.0.weight": rand(D, 256, scale=0.05),
        "t_embedder.mlp.0.bias": rand(D),
        "t_embedder.mlp.2.weight": rand(D, D),
        "t_embedder.mlp.2.bias": rand(D),
        "y_embedder.embedding_table.weight": rand(K + 1, D),
    }
    assert state["pos_embed"].shape == (1, n, D)
    for i in range(depth):
        state.update(
            {
                f"blocks.{i}.attn.qkv.weight": rand(3 * D, D),
                f"blocks.{i}.attn.qkv.bias": rand(3 * D),
                f"blocks.{i}.attn.proj.weight": rand(D, D),
                f"blocks.{i}.attn.proj.bias": rand(D),
                f"blocks.{i}.mlp.fc1.weight": rand(4 * D, D),
                f"blocks.{i}.mlp.fc1.bias": rand(4 * D),
                f"blocks.{i}.mlp.fc2.weight": rand(D, 4 * D),
                f"blocks.{i}.mlp.fc2.bias": rand(D),
                f"blocks.{i}.adaLN_modulation.1.weight": rand(6 * D, D),
                f"blocks.{i}.adaLN_modulation.1.bias": rand(6 * D),
            }
        )
    state.update(
        {
            "final_layer.linear.weight": rand(P * P * 2 * C, D),
            "final_layer.linear.bias": rand(P * P * 2 * C),
            "final_layer.adaLN_modulation.1.weight": rand(2 * D, D),
            "final_layer.adaLN_modulation.1.bias": rand(2 * D),
        }
    )
    return state


def reference_forward(sd: dict[str, Tensor], x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """facebookresearch/DiT's forward, written functionally over the state dict in float64
    (explicit softmax attention; y uses row K for the null class)."""
    sd = {k: v.double() for k, v in sd.items()}

    def linear(h: Tensor, name: str) -> Tensor:
        return h @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        return h * (1 + scale[:, None]) + shift[:, None]

    def norm(h: Tensor) -> Tensor:
        return F.layer_norm(h, (h.shape[-1],), eps=1e-6)

    B = x.shape[0]
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=P)
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]  # (B, N, D)
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = t[:, None].double() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    t_emb = linear(F.silu(linear(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]
    for i in range(DEPTH):
        b = f"blocks.{i}"
        mods = linear(F.silu(c), f"{b}.adaLN_modulation.1").chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        a = modulate(norm(h), shift_msa, scale_msa)
        qkv = linear(a, f"{b}.attn.qkv").reshape(B, -1, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // HEADS), dim=-1) @ v
        attn = linear(attn.transpose(1, 2).reshape(B, -1, D), f"{b}.attn.proj")
        h = h + gate_msa[:, None] * attn
        m = modulate(norm(h), shift_mlp, scale_mlp)
        m = linear(F.gelu(linear(m, f"{b}.mlp.fc1"), approximate="tanh"), f"{b}.mlp.fc2")
        h = h + gate_mlp[:, None] * m
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = linear(modulate(norm(h), shift, scale), "final_layer.linear")  # (B, N, P*P*2C)
    g = SIDE // P
    out = out.reshape(B, g, g, P, P, 2 * C)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(B, 2 * C, SIDE, SIDE)


def inputs(seed: int = 1, t: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, C, SIDE, SIDE, generator=gen, dtype=torch.float64)
    steps = torch.tensor([0.0, 17.0, 250.0, 499.0, 731.0, 999.0], dtype=torch.float64)
    if t is not None:
        steps = torch.full_like(steps, t)
    labels = torch.tensor([0, 4, K, 2, K, 1])  # reference ids; K = null
    return x, steps, labels


def ours(labels: Tensor) -> Tensor:
    return torch.where(labels == K, -1, labels)
