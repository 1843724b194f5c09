"""The router of an exported tree as a diffusers component: ``HetdiffRouterModel``.

diffusers' generic loader (``DiffusionPipeline.from_pretrained``) loads every component named in
``model_index.json`` with its class's ``from_pretrained(TREE/name)``. The router folder holds our
signed checkpoint (``router/router.safetensors``, its ``RouterSpec`` as metadata, and the spec
again as ``router/config.json``), so this class's ``from_pretrained`` is ``load_router``:
verified (digest, shapes before allocation), never unpickled. The FiLM conv router and the
transformer router load alike.

    router = HetdiffRouterModel.from_pretrained("tree/router")
    logits = router(x_t (B, C, H, W), t (B,) in [0, 1], cond) -> (B, K)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin
from torch import Tensor, nn

from hetdiff.experts.router_store import RouterSpec, load_router

ROUTER_CLASS = "HetdiffRouterModel"
ROUTER_LIBRARY = __name__  # model_index.json's library entry for the router


class HetdiffRouterModel(ModelMixin):
    """``router`` (``Router`` or ``TransformerRouter``) and its ``spec``, behind ModelMixin."""

    def __init__(self, router: nn.Module, spec: RouterSpec) -> None:
        super().__init__()
        self.router = router
        self.spec = spec

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, **kwargs: Any
    ) -> HetdiffRouterModel:
        """Load ``DIR/router.safetensors`` (a local folder). diffusers' loading options are
        accepted; ``torch_dtype`` casts the weights, the others do not apply to one small file."""
        router, spec = load_router(pretrained_model_name_or_path)
        dtype = kwargs.get("torch_dtype")
        model = cls(router, spec).eval()
        return model.to(dtype) if isinstance(dtype, torch.dtype) else model

    def forward(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        """Router logits (B, K) at x_t (B, C, H, W), t (B,) or scalar in [0, 1]."""
        return self.router(x, t, cond)
