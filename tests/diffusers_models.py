"""Tiny random diffusers models saved by diffusers' own save_pretrained (importable because pytest
puts tests/ on sys.path). Every parameter is redrawn N(0, 0.05) so no output is zero."""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch


def _randomize(model: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model.eval()


def tiny_unet(seed: int = 0, out_channels: int = 1, num_class_embeds: int | None = None):
    """UNet2DModel, 8 px, 1 channel, two levels (one with attention), about 45k parameters."""
    model = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=out_channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
        attention_head_dim=8, num_class_embeds=num_class_embeds,
    )  # fmt: skip
    return _randomize(model, seed)


def tiny_dit(seed: int = 0, learned_sigma: bool = True, num_classes: int = 10):
    """DiTTransformer2DModel (adaLN-Zero, class labels), 8 px, 1 channel, 2 blocks of width 32."""
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=1,
        out_channels=2 if learned_sigma else 1, num_layers=2, sample_size=8, patch_size=2,
        num_embeds_ada_norm=num_classes, norm_num_groups=4,
    )  # fmt: skip
    return _randomize(model, seed)


def tiny_pixart(seed: int = 0, caption_channels: int | None = None, out_channels: int = 1):
    """PixArtTransformer2DModel (AdaLN-Single), 8 px, 1 channel, 2 blocks of width 32."""
    model = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=out_channels,
        num_layers=2, sample_size=8, patch_size=2, use_additional_conditions=False,
        cross_attention_dim=32 if caption_channels else None, caption_channels=caption_channels,
        interpolation_scale=1,
    )  # fmt: skip
    return _randomize(model, seed)


def save_folder(model, scheduler, path: Path) -> Path:
    """``model.save_pretrained(path)`` and ``scheduler.save_pretrained(path / "scheduler")``."""
    model.save_pretrained(str(path))
    scheduler.save_pretrained(str(path / "scheduler"))
    return path
