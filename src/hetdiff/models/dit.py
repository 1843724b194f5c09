"""Diffusion Transformer with AdaLN-Single modulation (DiT backbone, PixArt-alpha conditioning).

Data flow (B = batch, N = patch tokens, D = hidden width, L = text tokens):

    x (B, C, H, W) --patchify + fixed sin-cos positions--> tokens (B, N, D)
    t (B,) float   --sinusoid + MLP--> t_emb (B, D);  c = t_emb [+ class embedding]  (B, D)
    c --t_block (SiLU, Linear D -> 6D), shared by all blocks--> t0 (B, 6, D)
    each block: (shift, scale, gate) x (attention, MLP) = its own scale_shift_table (6, D) + t0
        x = x + gate_msa * SelfAttn(LN(x) * (1 + scale_msa) + shift_msa)
        x = x + CrossAttn(x, text keys)                               (only with context_dim)
        x = x + gate_mlp * MLP(LN(x) * (1 + scale_mlp) + shift_mlp)
    final: shift, scale = its own table (2, D) + c;  Linear(LN(x) * (1 + scale) + shift)
    --unpatchify--> (B, out_channels, H, W)

AdaLN-Single replaces DiT's per-block adaLN MLP (6 D^2 parameters per block) with one shared
``t_block`` plus a (6, D) table per block. ``t_block``'s last Linear and the output Linear
start at zero, so an untrained model outputs exactly 0.

``DiTConfig.modulation = "adaln-zero"`` builds the original DiT conditioning instead (Peebles &
Xie; facebookresearch/DiT models.py), used to run imported DiT checkpoints unchanged:
    each block: (B, 6, D) = adaLN_modulation(c), adaLN_modulation = SiLU -> Linear(D, 6D)
    final:      shift, scale = adaLN_modulation(c), SiLU -> Linear(D, 2D)
with no ``t_block`` and no tables; the modulation Linears start at zero (adaLN-Zero).

The config, the model and the named configs live here; the block, attention, MLP and final
layer in ``hetdiff.models.dit_blocks``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hetdiff.conditioning import Conditioning, as_conditioning
from hetdiff.errors import HetdiffError
from hetdiff.models.dit_blocks import DiTBlock, FinalLayer
from hetdiff.models.embeddings import (
    ContextEmbedder,
    LabelEmbedder,
    PatchEmbed,
    PooledContextEmbedder,
    TimestepEmbedder,
)

MODULATIONS = ("adaln-single", "adaln-zero")

#################################################################################
#                                   Config                                      #
#################################################################################


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of one DiT. Defaults are the CPU-sized "tiny" model for 28x28 grayscale."""

    input_size: int = 28  # image side H = W, in pixels (or latent cells)
    in_channels: int = 1  # C of the input image
    patch_size: int = 2  # P: side of a square patch; N = (input_size / P)^2 tokens
    hidden_size: int = 64  # D: token width
    depth: int = 4  # number of transformer blocks
    num_heads: int = 4  # attention heads; D / num_heads is the head width
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * D
    num_classes: int = 0  # 0 = no class conditioning; else labels in [0, num_classes) or -1
    learned_sigma: bool = False  # output 2C channels: eps and DDPM variance interpolation
    context_dim: int | None = None  # text-token width E; set to add cross-attention
    pooled_context: bool = False  # with context_dim: also add the pooled caption to c (SD3-style)
    modulation: str = "adaln-single"  # "adaln-single" (PixArt) | "adaln-zero" (original DiT)

    def __post_init__(self) -> None:
        for name in (
            "input_size",
            "in_channels",
            "patch_size",
            "hidden_size",
            "depth",
            "num_heads",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise HetdiffError(f"DiTConfig.{name} must be a positive integer, got {value!r}")
        if self.input_size % self.patch_size:
            raise HetdiffError(
                f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}; "
                "pick a patch size that divides the image side"
            )
        if self.hidden_size % self.num_heads:
            raise HetdiffError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                "pick a head count that divides the width"
            )
        if self.hidden_size % 4:
            raise HetdiffError(
                f"hidden_size {self.hidden_size} must be divisible by 4 (2-D sin-cos positions)"
            )
        if self.mlp_ratio <= 0:
            raise HetdiffError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.num_classes < 0:
            raise HetdiffError(
                f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}"
            )
        if self.context_dim is not None and self.context_dim < 1:
            raise HetdiffError(
                f"context_dim must be a positive integer or None, got {self.context_dim}"
            )
        if self.pooled_context and self.context_dim is None:
            raise HetdiffError(
                "pooled_context needs context_dim (a text model); set both or neither"
            )
        if self.modulation not in MODULATIONS:
            raise HetdiffError(
                f"unknown modulation {self.modulation!r}; choose one of {', '.join(MODULATIONS)}"
            )

    @property
    def out_channels(self) -> int:
        """Output channels: C, or 2C with a learned variance."""
        return 2 * self.in_channels if self.learned_sigma else self.in_channels

    @property
    def num_patches(self) -> int:
        """N, the number of patch tokens."""
        return (self.input_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        """Inverse of ``to_dict``; unknown keys are an error (they would be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HetdiffError(f"unknown DiTConfig keys {unknown}; valid keys are {sorted(known)}")
        return cls(**d)


#################################################################################
#                                    Model                                      #
#################################################################################


class DiT(nn.Module):
    """Diffusion Transformer (AdaLN-Single, or adaLN-Zero by ``config.modulation``):
    ``forward(x, t, cond) -> prediction``, same H, W.

    The output is whatever the objective trains it to be (flow velocity, eps, x0, ...); with
    ``learned_sigma`` the last C channels are the DDPM variance interpolation.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.x_embedder = PatchEmbed(config.input_size, config.patch_size, config.in_channels, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(config.num_classes, D) if config.num_classes else None
        self.context_embedder = None
        if config.context_dim is not None:
            self.context_embedder = ContextEmbedder(config.context_dim, D)
        self.context_pooler = None
        if config.pooled_context:
            self.context_pooler = PooledContextEmbedder(config.context_dim, D)
        self.t_block = None
        if config.modulation == "adaln-single":
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))  # shared AdaLN-Single
        block = (D, config.num_heads, config.mlp_ratio, config.context_dim, config.modulation)
        self.blocks = nn.ModuleList(DiTBlock(*block) for _ in range(config.depth))
        self.final_layer = FinalLayer(D, config.patch_size, config.out_channels, config.modulation)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT/PixArt init: xavier Linears, N(0, 0.02) embeddings, zeros where output starts.

        Zeroed: ``t_block``'s Linear, each cross-attention output projection, the final Linear
        (adaLN-Zero: also every adaLN_modulation Linear). The (6, D) and (2, D) tables keep their
        randn / sqrt(D) init.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        conv = self.x_embedder.proj
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(conv.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        if self.context_embedder is not None:
            nn.init.normal_(self.context_embedder.proj[0].weight, std=0.02)
            nn.init.normal_(self.context_embedder.proj[2].weight, std=0.02)
        if self.context_pooler is not None:
            nn.init.normal_(self.context_pooler.proj[0].weight, std=0.02)
            nn.init.normal_(self.context_pooler.proj[2].weight, std=0.02)
        for block in self.blocks:
            if block.cross_attn is not None:
                nn.init.zeros_(block.cross_attn.proj.weight)
                nn.init.zeros_(block.cross_attn.proj.bias)
        modulation_linears = [self.t_block[1]] if self.t_block is not None else []
        for layer in (*self.blocks, self.final_layer):
            if hasattr(layer, "adaLN_modulation"):
                modulation_linears.append(layer.adaLN_modulation[1])
        for linear in modulation_linears:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ---------------------------------------------------------------- helpers
    def _check_input(self, x: Tensor, timestep: Tensor) -> Tensor:
        """Validate x and return the timesteps as a (B,) tensor."""
        cfg = self.config
        expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise HetdiffError(
                f"DiT expects x of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), got "
                f"{tuple(x.shape)}; resize the data or build the model with matching "
                "in_channels/input_size"
            )
        timestep = torch.as_tensor(timestep, device=x.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(x.shape[0])
        if tuple(timestep.shape) != (x.shape[0],):
            raise HetdiffError(
                f"timestep must be a scalar or shape ({x.shape[0]},), got {tuple(timestep.shape)}"
            )
        return timestep

    def _class_embedding(self, labels: Tensor | None, batch_size: int) -> Tensor | None:
        """(B, D) class embedding, or None for an unconditional model. Missing labels = null.

        Labels outside [0, num_classes) and -1 are refused: eagerly a HetdiffError naming their
        range; under ``torch.compile`` an assert inside the graph (RuntimeError), so a compiled
        class-conditional network stays one graph instead of breaking at the check."""
        if self.y_embedder is None:
            if labels is not None:
                raise HetdiffError(
                    "class labels were given to an unconditional model (num_classes=0); "
                    "drop them or build the model with num_classes > 0"
                )
            return None
        num_classes = self.config.num_classes
        if labels is None:
            labels = torch.full(
                (batch_size,), -1, dtype=torch.long, device=self.x_embedder.proj.weight.device
            )
        if labels.shape != (batch_size,):
            raise HetdiffError(
                f"class_labels must have shape ({batch_size},), got {tuple(labels.shape)}"
            )
        if torch.compiler.is_compiling():  # asserted in the graph (an `if` on data breaks it)
            if labels.numel():
                in_range = (labels.min() >= -1) & (labels.max() < num_classes)
                torch._assert_async(in_range, f"class labels must be in [0, {num_classes}) or -1")
        elif labels.numel() and (labels.min() < -1 or labels.max() >= num_classes):
            raise HetdiffError(
                f"class labels must be in [0, {num_classes}) or -1 (null), got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return self.y_embedder(labels)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, N, P*P*C_out) -> (B, C_out, H, W), patches in row-major grid order."""
        B, P, C = patches.shape[0], self.config.patch_size, self.config.out_channels
        grid = self.config.input_size // P
        x = patches.view(B, grid, grid, P, P, C)  # (B, h, w, p, q, c)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, c, h, p, w, q)
        return x.reshape(B, C, grid * P, grid * P)

    # ---------------------------------------------------------------- forward
    def forward(
        self, x: Tensor, timestep: Tensor, cond: Conditioning | Tensor | None = None
    ) -> Tensor:
        """Predict from a noisy image.

        Args:
            x: (B, C, H, W) noisy input.
            timestep: (B,) or scalar float, in the network's own units (e.g. t * 1000).
            cond: a ``Conditioning``, an int64 (B,) label tensor, or None. A class-conditional
                model given no labels uses the null class; a text model given no context uses
                the null context.

        Returns:
            (B, out_channels, H, W).
        """
        timestep = self._check_input(x, timestep)
        cond = as_conditioning(cond) or Conditioning()
        B = x.shape[0]
        if cond.batch_size is not None and cond.batch_size != B:
            raise HetdiffError(f"cond has {cond.batch_size} rows but x has {B}; give one per row")

        # ---- embeddings
        tokens = self.x_embedder(x)  # (B, N, D)
        c = self.t_embedder(timestep)  # (B, D)
        class_emb = self._class_embedding(cond.class_labels, B)
        if class_emb is not None:
            c = c + class_emb  # (B, D)
        if self.context_pooler is not None:
            c = c + self.context_pooler(cond.context, cond.context_mask, B)  # (B, D)
        # (B, 6, D) shared by all blocks (AdaLN-Single); adaLN-Zero blocks modulate from c (B, D)
        t0 = c if self.t_block is None else self.t_block(c).view(B, 6, -1)

        keys = key_mask = None
        if self.context_embedder is not None:
            keys, key_mask = self.context_embedder(cond.context, cond.context_mask, B)
        elif cond.context is not None:
            raise HetdiffError(
                "text context was given to a model without cross-attention; "
                "build it with context_dim set or drop the context"
            )

        # ---- transformer
        for block in self.blocks:
            tokens = block(tokens, t0, keys, key_mask)  # (B, N, D)

        # ---- output
        patches = self.final_layer(tokens, c)  # (B, N, P*P*C_out)
        return self.unpatchify(patches)  # (B, C_out, H, W)


#################################################################################
#                                 Named configs                                 #
#################################################################################

DIT_CONFIGS: dict[str, dict[str, Any]] = {
    # CPU sizes for 28x28 data
    "tiny": dict(hidden_size=64, depth=4, num_heads=4, patch_size=2),  # ~0.25M params
    "small": dict(hidden_size=128, depth=6, num_heads=4, patch_size=2),  # ~1.3M params
    # DiT paper sizes (Peebles & Xie, Table 1); set input_size / in_channels for your data
    "DiT-S/2": dict(hidden_size=384, depth=12, num_heads=6, patch_size=2),
    "DiT-S/4": dict(hidden_size=384, depth=12, num_heads=6, patch_size=4),
    "DiT-B/2": dict(hidden_size=768, depth=12, num_heads=12, patch_size=2),
    "DiT-B/4": dict(hidden_size=768, depth=12, num_heads=12, patch_size=4),
    "DiT-L/2": dict(hidden_size=1024, depth=24, num_heads=16, patch_size=2),
    "DiT-XL/2": dict(hidden_size=1152, depth=28, num_heads=16, patch_size=2),
}


def dit_config(name: str, **overrides: Any) -> DiTConfig:
    """The named config with ``overrides`` applied, e.g. ``dit_config("small", num_classes=10)``."""
    if name not in DIT_CONFIGS:
        raise HetdiffError(f"unknown DiT model {name!r}; valid names: {', '.join(DIT_CONFIGS)}")
    return DiTConfig.from_dict({**DIT_CONFIGS[name], **overrides})


def compile_blocks(model: DiT, **compile_options: Any) -> DiT:
    """Compile each transformer block and the final layer in place (``nn.Module.compile``, i.e.
    ``torch.compile`` with ``compile_options``) and return ``model``.

    In place, so the state dict keeps its keys (``torch.compile(model)`` would prefix them with
    ``_orig_mod.``) and checkpoints save and load unchanged; per block, so every block reuses one
    compiled graph and activation checkpointing or FSDP wrapping of blocks still applies. The
    outputs equal the eager ones to float rounding (fused elementwise kernels round differently),
    not bitwise. The embeddings stay eager: their input checks raise ``HetdiffError``.
    """
    for layer in (*model.blocks, model.final_layer):
        layer.compile(**compile_options)
    return model


def build_dit(name_or_config: str | DiTConfig, **overrides: Any) -> DiT:
    """A freshly initialized DiT from a registry name or a config (plus field overrides)."""
    if isinstance(name_or_config, DiTConfig):
        config = DiTConfig.from_dict({**name_or_config.to_dict(), **overrides})
    else:
        config = dit_config(name_or_config, **overrides)
    return DiT(config)
