"""A diffusers denoiser as a hetdiff network: ``net(x, timestep, cond) -> output``.

The module is diffusers' own class (``UNet2DModel``, ``DiTTransformer2DModel``,
``PixArtTransformer2DModel``) built from its ``config.json``; no weight is copied into our DiT.
This wrapper only translates the call:

    x (B, C, H, W), timestep (B,) float in the network's own units, cond (Conditioning | labels)
      UNet2DModel:              module(x, timestep, class_labels=labels)        labels only with
                                                                                num_class_embeds
      DiTTransformer2DModel:    module(x, timestep, class_labels)               null class -1 ->
                                                                                row num_classes
      PixArtTransformer2DModel: module(x, encoder_hidden_states=context, timestep,
                                       encoder_attention_mask=mask, added_cond_kwargs)
    -> (B, out_channels, H, W)

What the output means (eps, x0, v_ddpm or flow velocity) and which timestep units the network
reads are the objective's business: the velocity adapters (``objectives/velocity.py``) handle
them exactly as for our own networks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hetdiff.conditioning import Conditioning, as_conditioning
from hetdiff.errors import HetdiffError

UNET, DIT, PIXART = "UNet2DModel", "DiTTransformer2DModel", "PixArtTransformer2DModel"
DIFFUSERS_CLASSES = (UNET, DIT, PIXART)
PIXART_VAE_FACTOR = 8  # PixArt's size conditions are in pixels: latent side x 8


def diffusers_class(name: str) -> type:
    """The diffusers model class called ``name`` (one of ``DIFFUSERS_CLASSES``)."""
    if name not in DIFFUSERS_CLASSES:
        raise HetdiffError(
            f"diffusers model class {name!r} is not supported; use one of "
            f"{', '.join(DIFFUSERS_CLASSES)}"
        )
    try:
        import diffusers
    except ImportError as err:
        raise HetdiffError(
            "diffusers is not installed; `pip install diffusers` to use diffusers experts"
        ) from err
    return getattr(diffusers, name)


def build_diffusers_module(name: str, config: dict[str, Any]) -> nn.Module:
    """A freshly initialized diffusers module of class ``name`` from its config dict."""
    cls = diffusers_class(name)
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        return cls.from_config(clean)
    except (TypeError, ValueError, NotImplementedError) as err:
        raise HetdiffError(f"{name} config does not build ({err})") from err


def _config(module: nn.Module) -> Any:
    return module.config  # diffusers' FrozenDict of constructor arguments


def num_classes_of(name: str, config: dict[str, Any]) -> int:
    """Class labels the network takes: UNet ``num_class_embeds``, DiT ``num_embeds_ada_norm``
    (PixArt's ``num_embeds_ada_norm`` is unused); 0 for an unconditional network."""
    if name == UNET:
        if config.get("class_embed_type") not in (None,):
            raise HetdiffError(
                f"UNet2DModel class_embed_type {config.get('class_embed_type')!r} is not "
                "supported; only num_class_embeds (an embedding table) is"
            )
        return int(config.get("num_class_embeds") or 0)
    if name == DIT:
        return int(config.get("num_embeds_ada_norm") or 0)
    return 0


def context_dim_of(name: str, config: dict[str, Any]) -> int | None:
    """Width of the text tokens a PixArt network reads (``caption_channels``, else
    ``cross_attention_dim``); None for networks without cross-attention."""
    if name != PIXART or config.get("cross_attention_dim") is None:
        return None
    return int(config.get("caption_channels") or config["cross_attention_dim"])


class DiffusersNet(nn.Module):
    """``forward(x (B, C, H, W), timestep (B,) or scalar, cond) -> (B, out_channels, H, W)``.

    ``module`` is the diffusers model; ``class_name`` one of ``DIFFUSERS_CLASSES``. Its weights
    are ``module.state_dict()`` (the keys of ``diffusion_pytorch_model.safetensors``).
    """

    def __init__(self, module: nn.Module, class_name: str) -> None:
        super().__init__()
        if class_name not in DIFFUSERS_CLASSES:
            diffusers_class(class_name)  # raises the one-line error
        self.module = module
        self.class_name = class_name
        self.num_classes = num_classes_of(class_name, dict(_config(module)))

    def _labels(self, cond: Conditioning | None, batch: int, device: torch.device) -> Tensor:
        labels = None if cond is None else cond.class_labels
        if self.num_classes == 0:
            if labels is not None:
                raise HetdiffError(
                    f"class labels were given to an unconditional {self.class_name}; drop them"
                )
            return None
        if labels is None:
            labels = torch.full((batch,), -1, dtype=torch.long, device=device)
        if labels.numel() and (labels.min() < -1 or labels.max() >= self.num_classes):
            raise HetdiffError(
                f"class labels must be in [0, {self.num_classes}) or -1 (null), got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        if self.class_name == DIT:  # diffusers' DiT keeps its null (dropped) class in the last row
            return torch.where(labels < 0, self.num_classes, labels).to(device)
        if (labels < 0).any():
            raise HetdiffError(
                "this UNet2DModel has no null class (diffusers' UNet has no guidance dropout); "
                "sample it with class labels"
            )
        return labels.to(device)

    def _pixart_kwargs(self, x: Tensor, cond: Conditioning | None) -> dict[str, Any]:
        config, batch = _config(self.module), x.shape[0]
        kwargs: dict[str, Any] = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
        if self.module.use_additional_conditions:
            side = [x.shape[-2] * PIXART_VAE_FACTOR, x.shape[-1] * PIXART_VAE_FACTOR]
            kwargs["added_cond_kwargs"] = {
                "resolution": torch.tensor([side] * batch, dtype=x.dtype, device=x.device),
                "aspect_ratio": torch.ones(batch, 1, dtype=x.dtype, device=x.device),
            }
        width = context_dim_of(PIXART, dict(config))
        if width is None:
            if cond is not None and cond.context is not None:
                raise HetdiffError("text context was given to a PixArt without cross-attention")
            return kwargs
        if cond is None or cond.context is None:  # the null context: one masked zero token
            context = x.new_zeros(batch, 1, width)
            mask = torch.zeros(batch, 1, dtype=torch.bool, device=x.device)
        else:
            context, mask = cond.context.to(x.dtype), cond.full_context_mask()
        kwargs["encoder_hidden_states"] = context
        kwargs["encoder_attention_mask"] = mask.to(x.dtype)
        return kwargs

    def forward(
        self, x: Tensor, timestep: Tensor, cond: Conditioning | Tensor | None = None
    ) -> Tensor:
        timestep = torch.as_tensor(timestep, device=x.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(x.shape[0])
        cond = as_conditioning(cond)
        if self.class_name == PIXART:
            if cond is not None and cond.class_labels is not None:
                raise HetdiffError("class labels were given to a PixArt (it reads text only)")
            kwargs = self._pixart_kwargs(x, cond)
            return self.module(x, timestep=timestep, return_dict=False, **kwargs)[0]
        if cond is not None and cond.context is not None:
            raise HetdiffError(f"text context was given to a {self.class_name}; it reads none")
        labels = self._labels(cond, x.shape[0], x.device)
        if self.class_name == UNET:
            return self.module(x, timestep, class_labels=labels, return_dict=False)[0]
        return self.module(x, timestep=timestep, class_labels=labels, return_dict=False)[0]
