"""The transformer router: DiT blocks over patch tokens and a pooled classification head.

The same task as the FiLM conv router (``models/router.py``): logits (B, K) of the cluster x0
came from, given x_t, t and the condition; trained by ``training/router.py`` with cross-entropy.
Built from DiT parts (``models/dit_blocks.py``, ``models/embeddings.py``):

    x (B, C, H, W) --patchify + fixed sin-cos positions--> tokens (B, N, D)
    c (B, D) = MLP(sinusoid(t * time_scale)) [+ class embedding] [+ pooled caption]
    t0 (B, 6, D) = t_block(c), shared (AdaLN-Single); each block adds its own (6, D) table
    depth x DiT block (modulated self-attention + modulated MLP)
    head: shift, scale = (2, D) table + c;  pooled = mean_N(LN(tokens) (1 + scale) + shift)
    logits (B, K) = Linear(pooled) + Linear(SiLU(c))      (the second: the prior p(k | t, cond))

``modulation = "adaln-zero"`` gives each block its own SiLU -> Linear(D, 6D) instead (the
original DiT). Named configs in ``TRANSFORMER_ROUTER_CONFIGS``; "DiT-B/2" is the size of the
released 8-expert model's router (about 129M parameters, ``parameter_count``). The heads start
at zero, so an untrained router gives uniform weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hetdiff.conditioning import Conditioning, as_conditioning
from hetdiff.errors import HetdiffError
from hetdiff.models.dit_blocks import DiTBlock, modulate
from hetdiff.models.embeddings import (
    LabelEmbedder,
    PatchEmbed,
    PooledContextEmbedder,
    TimestepEmbedder,
)
from hetdiff.models.router import RouterConfigFields, router_inputs

MODULATIONS = ("adaln-single", "adaln-zero")

#################################################################################
#                                   Config                                      #
#################################################################################


@dataclass(frozen=True)
class TransformerRouterConfig(RouterConfigFields):
    """Architecture of one transformer router (defaults: a tiny CPU size for 8-32 px data)."""

    NAME = "transformer router"  # how errors name the config (not a field)

    num_clusters: int  # K: number of logits
    resolution: int  # image side H = W
    channels: int  # image channels C
    patch_size: int = 2  # P; N = (resolution / P)^2 tokens
    hidden_size: int = 32  # D
    depth: int = 2  # DiT blocks
    num_heads: int = 2  # attention heads (D divisible by it)
    mlp_ratio: float = 4.0  # MLP width = mlp_ratio * D
    num_classes: int = 0  # 0 = no class input; else labels in [0, num_classes) or -1 (null)
    context_dim: int | None = None  # text-token width E; set to condition on the pooled caption
    time_scale: float = 1000.0  # the sinusoid sees t * time_scale, as the experts do
    modulation: str = "adaln-single"  # "adaln-single" (PixArt) | "adaln-zero" (original DiT)

    def __post_init__(self) -> None:
        names = ("num_clusters", "resolution", "channels", "patch_size", "hidden_size", "depth",
                 "num_heads")  # fmt: skip
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HetdiffError(f"router {name} must be a positive integer, got {value!r}")
        if self.num_clusters < 2:
            raise HetdiffError(f"a router needs num_clusters >= 2, got {self.num_clusters}")
        if self.resolution % self.patch_size:
            raise HetdiffError(
                f"router resolution {self.resolution} is not divisible by patch_size "
                f"{self.patch_size}; pick a patch size that divides the image side"
            )
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise HetdiffError(
                f"router hidden_size {self.hidden_size} must be divisible by num_heads "
                f"{self.num_heads} and by 4 (2-D sin-cos positions)"
            )
        if isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise HetdiffError(f"num_classes must be >= 0 (0 = none), got {self.num_classes!r}")
        if self.context_dim is not None and self.context_dim < 1:
            raise HetdiffError(f"context_dim must be positive or None, got {self.context_dim}")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise HetdiffError(f"time_scale must be a positive number, got {self.time_scale!r}")
        if self.mlp_ratio <= 0:
            raise HetdiffError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.modulation not in MODULATIONS:
            raise HetdiffError(
                f"unknown modulation {self.modulation!r}; choose one of {', '.join(MODULATIONS)}"
            )


#################################################################################
#                                   Network                                     #
#################################################################################


class TransformerRouter(nn.Module):
    """``forward(x_t (B, C, H, W), t (B,) or scalar in [0, 1], cond) -> logits (B, K)``.

    ``cond``: a ``Conditioning`` / int64 labels / None; labels -1 (or none) use the learned null
    class, a missing or all-masked caption the learned null vector. Conditions the router was
    not built for are ignored, so an unconditional router serves conditional experts.
    """

    def __init__(self, config: TransformerRouterConfig) -> None:
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.x_embedder = PatchEmbed(config.resolution, config.patch_size, config.channels, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(config.num_classes, D) if config.num_classes else None
        self.context_pooler = None
        if config.context_dim is not None:
            self.context_pooler = PooledContextEmbedder(config.context_dim, D)
        self.t_block = None
        if config.modulation == "adaln-single":
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        block = (D, config.num_heads, config.mlp_ratio, None, config.modulation)
        self.blocks = nn.ModuleList(DiTBlock(*block) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, D) / D**0.5)  # (2, D)
        self.head = nn.Linear(D, config.num_clusters)
        self.prior_head = nn.Linear(D, config.num_clusters)  # p(k | t, cond) without the image
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """xavier Linears; N(0, 0.02) embeddings; zero t_block / adaLN Linears and both heads."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        zeroed = [self.head, self.prior_head]
        zeroed += [self.t_block[1]] if self.t_block is not None else []
        zeroed += [b.adaLN_modulation[1] for b in self.blocks if hasattr(b, "adaLN_modulation")]
        for linear in zeroed:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def embed(self, t: Tensor, cond: Conditioning | None, batch: int) -> Tensor:
        """(B, D) embedding c of time and condition."""
        c = self.t_embedder(t * self.config.time_scale)  # (B, D)
        labels = None if cond is None else cond.class_labels
        if self.y_embedder is not None:
            if labels is None:
                labels = torch.full((batch,), -1, dtype=torch.long, device=c.device)
            if labels.numel() and (labels.min() < -1 or labels.max() >= self.config.num_classes):
                raise HetdiffError(
                    f"router class labels must be in [0, {self.config.num_classes}) or -1 "
                    f"(null), got range [{int(labels.min())}, {int(labels.max())}]"
                )
            c = c + self.y_embedder(labels.to(c.device))
        if self.context_pooler is not None:
            context = None if cond is None else cond.context
            mask = None if cond is None else cond.context_mask
            c = c + self.context_pooler(context, mask, batch)
        return c

    def forward(
        self, x: Tensor, t: Tensor | float, cond: Conditioning | Tensor | None = None
    ) -> Tensor:
        batch, dtype = x.shape[0], self.head.weight.dtype
        t = router_inputs(self.config, x, t, dtype)
        c = self.embed(t, as_conditioning(cond), batch)  # (B, D)
        t0 = c if self.t_block is None else self.t_block(c).view(batch, 6, -1)
        tokens = self.x_embedder(x.to(dtype))  # (B, N, D)
        for block in self.blocks:
            tokens = block(tokens, t0)  # (B, N, D)
        shift, scale = (self.scale_shift_table[None] + c[:, None]).chunk(2, dim=1)  # (B, 1, D)
        pooled = modulate(self.norm(tokens), shift, scale).mean(dim=1)  # (B, D)
        return self.head(pooled) + self.prior_head(nn.functional.silu(c))  # (B, K)


#################################################################################
#                                 Named configs                                 #
#################################################################################

TRANSFORMER_ROUTER_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, depth=2, num_heads=2, patch_size=2),  # CPU tests
    "small": dict(hidden_size=128, depth=4, num_heads=4, patch_size=2),
    "DiT-S/2": dict(hidden_size=384, depth=12, num_heads=6, patch_size=2),
    # the released decentralized model routes with a DiT-B/2 with per-block adaLN: ~129M
    "DiT-B/2": dict(hidden_size=768, depth=12, num_heads=12, patch_size=2, modulation="adaln-zero"),
    "DiT-B/2-single": dict(hidden_size=768, depth=12, num_heads=12, patch_size=2),  # ~89M
}


def transformer_router_config(name: str, **fields: Any) -> TransformerRouterConfig:
    """The named config with ``fields`` (num_clusters, resolution, channels, ...) set."""
    if name not in TRANSFORMER_ROUTER_CONFIGS:
        raise HetdiffError(
            f"unknown transformer router {name!r}; valid names: "
            f"{', '.join(TRANSFORMER_ROUTER_CONFIGS)}"
        )
    return TransformerRouterConfig.from_dict({**TRANSFORMER_ROUTER_CONFIGS[name], **fields})


def parameter_count(config: TransformerRouterConfig) -> int:
    """Trainable parameters of ``TransformerRouter(config)``, built on the meta device (no
    memory is allocated, so a DiT-B-sized count is cheap)."""
    with torch.device("meta"):
        router = TransformerRouter(config)
    return sum(p.numel() for p in router.parameters())
