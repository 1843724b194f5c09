"""Input embeddings of the DiT: patches, positions, timesteps, class labels and text tokens.

Shapes use B = batch, C = image channels, H = W = image side, P = patch side,
N = (H / P)^2 patch tokens, D = hidden width, L = text tokens, E = text-token width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hetdiff.conditioning import mean_of_real_tokens
from hetdiff.errors import HetdiffError

FREQUENCY_EMBEDDING_SIZE = 256
"""Width of the sinusoidal timestep features fed to the timestep MLP (as in DiT and PixArt)."""


#################################################################################
#                          Fixed sinusoidal embeddings                          #
#################################################################################


def timestep_embedding(
    timesteps: Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10000.0
) -> Tensor:
    """Sinusoidal features of float timesteps.

    With half = dim // 2 and f_i = max_period^(-i / half) for i = 0..half-1:
        emb(t) = [cos(t f_0), ..., cos(t f_{half-1}), sin(t f_0), ..., sin(t f_{half-1})]
    (a trailing zero column when ``dim`` is odd). ``t`` is in the network's own units: a
    fractional DDPM step in [0, T-1] or a flow time times 1000.

    Args:
        timesteps: (B,) float (integers are cast); fractional values are fine.
        dim: output width.
        max_period: the slowest period; controls the lowest frequency.

    Returns:
        (B, dim) float32 features (float64 when ``timesteps`` is float64).
    """
    half = dim // 2
    dtype = timesteps.dtype if timesteps.dtype == torch.float64 else torch.float32
    exponent = torch.arange(half, dtype=dtype, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)  # (half,)
    args = timesteps.to(dtype)[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(M,) positions -> (M, dim) = [sin(p w_i), cos(p w_i)] with w_i = 10000^(-i / (dim/2))."""
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    args = positions.to(torch.float64)[:, None] * omega[None]  # (M, dim / 2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def sincos_2d_pos_embed(dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D sin-cos positional embedding of a ``grid_size`` x ``grid_size`` patch grid.

    Token n = row * grid_size + col (row-major, the order of ``flatten`` on a patch grid).
    The first dim/2 channels encode the column, the last dim/2 the row, each by ``sincos_1d``
    (the layout of the DiT / MAE reference). Computed in float64.

    Returns:
        (grid_size^2, dim) float64.
    """
    if dim % 4:
        raise HetdiffError(
            f"hidden_size {dim} must be divisible by 4 for the 2-D sin-cos embedding"
        )
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (G, G) each
    col_emb = sincos_1d(dim // 2, cols.reshape(-1))  # (G*G, dim/2)
    row_emb = sincos_1d(dim // 2, rows.reshape(-1))  # (G*G, dim/2)
    return torch.cat([col_emb, row_emb], dim=1)  # (G*G, dim)


#################################################################################
#                             Learned embedders                                 #
#################################################################################


class PatchEmbed(nn.Module):
    """(B, C, H, W) image -> (B, N, D) patch tokens plus the fixed positional embedding.

    A conv with kernel = stride = P cuts non-overlapping patches and projects each to D.
    The positional embedding is a non-trainable buffer (saved in the state dict).
    """

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        pos = sincos_2d_pos_embed(hidden_size, input_size // patch_size)
        self.register_buffer("pos_embed", pos.float()[None], persistent=True)  # (1, N, D)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.proj(x)  # (B, D, H/P, W/P)
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, D), a strided view (D-major)
        # pos_embed first: the sum then takes pos_embed's row-major (N, D) layout, so every later
        # LayerNorm and Linear gets a contiguous input instead of copying one (same values)
        return self.pos_embed + tokens  # (B, N, D), contiguous


class TimestepEmbedder(nn.Module):
    """(B,) float timesteps -> (B, D): sinusoidal features, then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_size: int = FREQUENCY_EMBEDDING_SIZE):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, timesteps: Tensor) -> Tensor:
        features = timestep_embedding(timesteps, self.frequency_size)  # (B, 256)
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # (B, D)


class LabelEmbedder(nn.Module):
    """(B,) class ids in [-1, num_classes) -> (B, D); -1 (the null class) uses row num_classes."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden_size)  # last row = null class

    def forward(self, labels: Tensor) -> Tensor:
        rows = torch.where(labels < 0, self.num_classes, labels)  # -1 -> null row
        return self.table(rows)  # (B, D)


class ContextEmbedder(nn.Module):
    """Text tokens (B, L, E) -> (B, 1 + L, D) keys for cross-attention, with their key mask.

    Tokens go through a two-layer GELU MLP (PixArt's caption projection). A learned null token
    is prepended; it is attended to only by rows whose mask has no real token, so a null
    context (all-False mask, or no context at all) is a learned condition rather than a
    softmax over nothing, and it never mixes into rows that do have text.
    """

    def __init__(self, context_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(context_dim, hidden_size),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden_size, hidden_size),
        )
        self.null_token = nn.Parameter(torch.randn(1, 1, hidden_size) / hidden_size**0.5)

    def forward(
        self, context: Tensor | None, mask: Tensor | None, batch_size: int
    ) -> tuple[Tensor, Tensor]:
        """Return keys (B, 1 + L, D) and key mask (B, 1 + L) bool, True = attend.

        ``context=None`` means the null context for every row (keys = the null token only).
        """
        null = self.null_token.expand(batch_size, 1, -1)  # (B, 1, D)
        if context is None:
            return null, torch.ones(batch_size, 1, dtype=torch.bool, device=null.device)
        tokens = self.proj(context.to(null.dtype))  # (B, L, D)
        if mask is None:
            mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        use_null = ~mask.any(dim=1, keepdim=True)  # (B, 1): rows without any real token
        return torch.cat([null, tokens], dim=1), torch.cat([use_null, mask], dim=1)


class PooledContextEmbedder(nn.Module):
    """Text tokens (B, L, E) with mask (B, L) -> (B, D), added to the time embedding.

    pooled = mean of the real tokens' rows (mask True), then Linear(E, D) -> SiLU -> Linear(D, D)
    (SD3's pooled-text path next to cross-attention). Rows without any real token, or
    ``context=None``, get a learned null vector, so classifier-free guidance's null condition is
    one learned point here as it is in cross-attention (initialized at zero).
    """

    def __init__(self, context_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(context_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.null = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, context: Tensor | None, mask: Tensor | None, batch_size: int) -> Tensor:
        null = self.null.expand(batch_size, -1)  # (B, D)
        if context is None:
            return null
        pooled, count = mean_of_real_tokens(context, mask, null.dtype)  # (B, E), (B, 1)
        return torch.where(count > 0, self.proj(pooled), null)
