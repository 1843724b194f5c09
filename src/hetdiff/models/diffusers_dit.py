"""Our DiT as a diffusers model: ``HetdiffDiTModel(ModelMixin, ConfigMixin)``.

diffusers has no class with our DiT's class-label path and learned null class (nor its
pooled-caption or text null key), so an exported class- or text-conditional hetdiff DiT is
written as this class: ``HetdiffDiTModel.from_pretrained(expert_k)`` is diffusers' own loader
(``config.json`` = the ``DiTConfig`` fields, ``diffusion_pytorch_model.safetensors`` = our
checkpoint's tensors under our own keys), and its forward is our network's:

    forward(hidden_states (B, C, H, W), timestep (B,) or scalar in the network's units,
            class_labels (B,) int64 in [0, num_classes) or -1 (the null class) | None,
            encoder_hidden_states (B, L, E) | None, encoder_attention_mask (B, L) | None)
      -> Transformer2DModelOutput(sample (B, out_channels, H, W))     (= DiT(x, t, cond))

The DiT's submodules are registered on this module itself (no key prefix) and the ``DiT``
object that owns them is kept beside (``.dit``), so the state dict, ``.to()`` and the loader's
per-tensor assignment all reach the same parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin  # noqa: F401 (ModelMixin: diffusers' loader looks it up here)
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import Tensor

from hetdiff.conditioning import Conditioning
from hetdiff.models.dit import DiT, DiTConfig

HETDIFF_DIT_CLASS = "HetdiffDiTModel"
HETDIFF_DIT_LIBRARY = __name__  # model_index.json's library entry for this class


class HetdiffDiTModel(ModelMixin, ConfigMixin):
    """A ``DiT`` behind diffusers' model interface; the arguments are ``DiTConfig``'s fields."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        input_size: int = 28,
        in_channels: int = 1,
        patch_size: int = 2,
        hidden_size: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        learned_sigma: bool = False,
        context_dim: int | None = None,
        pooled_context: bool = False,
        modulation: str = "adaln-single",
    ) -> None:
        super().__init__()
        fields = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        dit = DiT(DiTConfig(**fields))
        for name, child in dit.named_children():
            self.add_module(name, child)  # the same module objects: keys as in our checkpoint
        object.__setattr__(self, "_dit", dit)  # not registered: its children already are

    @property
    def dit(self) -> DiT:
        """The ``DiT`` whose submodules this model holds."""
        return self._dit

    def train(self, mode: bool = True) -> HetdiffDiTModel:
        super().train(mode)
        self._dit.training = mode
        return self

    @classmethod
    def from_dit_config(cls, config: DiTConfig) -> HetdiffDiTModel:
        """A fresh model of ``config``."""
        return cls(**dataclasses.asdict(config))

    def forward(
        self,
        hidden_states: Tensor,
        timestep: Tensor | float,
        class_labels: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[Tensor]:
        """Our DiT's output at ``timestep`` (the network's own units, e.g. t * 1000)."""
        mask = None
        if encoder_attention_mask is not None:
            mask = encoder_attention_mask.to(hidden_states.device) > 0.5
        labels = None if class_labels is None else class_labels.long()
        cond = Conditioning(class_labels=labels, context=encoder_hidden_states, context_mask=mask)
        sample = self._dit(hidden_states, torch.as_tensor(timestep), cond)
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)


def hetdiff_dit_config(model: dict[str, Any]) -> dict[str, Any]:
    """The ``HetdiffDiTModel`` config (``DiTConfig`` fields) of one of our DiT model dicts."""
    names = {field.name for field in dataclasses.fields(DiTConfig)}
    return DiTConfig.from_dict({k: v for k, v in model.items() if k in names}).to_dict()
