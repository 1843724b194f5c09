"""The router network r(k | x_t, t, cond): a small classifier of which cluster x0 came from.

Its logits (B, K) are trained with cross-entropy against the cluster of x0 on the flow path
(``hetdiff.training.router``); the minimizer is the Bayes router p(k | x_t, t, cond): one-hot as
t -> 0, the cluster priors p(k | cond) as t -> 1. A small convolutional net, cheap next to an
expert:

    x (B, C, H, W) --3x3 conv (stride 2 from 16 px)--> (B, W0, H', W')
    depth x [FiLM residual block, then 3x3 stride-2 conv while the side is > 4]
    GroupNorm, SiLU, global mean --Linear--> logits (B, K)  (+ Linear(SiLU(emb)): the prior term)

    emb (B, E) = MLP(sinusoid(t * time_scale)) [+ class embedding] [+ pooled text context]

FiLM: h = conv(SiLU(GroupNorm(x) * (1 + scale) + shift)), x <- x + h, with (shift, scale) a
zero-initialized Linear of SiLU(emb). A text router (``context_dim`` set) mean-pools the caption
tokens over their real positions; a row without any real token (the null context) uses a learned
null vector, as a class router uses its learned null class for label -1.

The checkpoint (``RouterSpec``, save/load) lives in ``hetdiff.experts.router_store``, training in
``hetdiff.training.router``, accuracy per t in ``hetdiff.metrics.routing``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hetdiff.conditioning import Conditioning, as_conditioning, mean_of_real_tokens
from hetdiff.errors import HetdiffError
from hetdiff.models.embeddings import LabelEmbedder, timestep_embedding

CONDITIONINGS = ("none", "class", "text")
_FREQUENCY_SIZE = 128  # sinusoidal features of t * time_scale fed to the time MLP


#################################################################################
#                                   Config                                      #
#################################################################################


class RouterConfigFields:
    """What every router architecture config shares: its conditioning kind (from
    ``num_classes`` and ``context_dim``) and a JSON round trip (what a ``RouterSpec`` stores as
    ``model``). Mixed into the frozen dataclass of each router network."""

    NAME = "RouterConfig"  # how errors name the config
    num_classes: int
    context_dim: int | None

    @property
    def conditioning(self) -> str:
        """ "text" with a context width, else "class" with classes, else "none"."""
        if self.context_dim is not None:
            return "text"
        return "class" if self.num_classes else "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of ``to_dict``; unknown keys are a one-line error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HetdiffError(f"unknown {cls.NAME} keys {unknown}; valid keys are {sorted(known)}")
        return cls(**d)


def router_inputs(config: Any, x: Tensor, t: Tensor | float, dtype: torch.dtype) -> Tensor:
    """Check x (B, C, H, W) against a router config and broadcast t (scalar or (B,)) to (B,)
    in ``dtype``; shared by every router network. One-line error for a wrong shape."""
    c, r = config.channels, config.resolution
    if x.ndim != 4 or tuple(x.shape[1:]) != (c, r, r):
        raise HetdiffError(
            f"router expects x of shape (B, {c}, {r}, {r}), got {tuple(x.shape)}; "
            "use a router trained on this data"
        )
    t = torch.as_tensor(t, device=x.device, dtype=dtype)
    return t.expand(x.shape[0]) if t.ndim == 0 else t.to(dtype)


@dataclass(frozen=True)
class RouterConfig(RouterConfigFields):
    """Architecture of one router. Defaults suit 28x28 gray data (about 40k parameters)."""

    num_clusters: int  # K: number of logits
    resolution: int  # image side H = W
    channels: int  # image channels C
    hidden: int = 32  # conv width (a multiple of 8: GroupNorm uses 8 groups)
    depth: int = 2  # FiLM residual blocks, each followed by a stride-2 conv while side > 4
    num_classes: int = 0  # 0 = no class input; else labels in [0, num_classes) or -1 (null)
    context_dim: int | None = None  # text-token width E; set to condition on pooled text
    time_scale: float = 1000.0  # the sinusoid sees t * time_scale, as the experts do

    def __post_init__(self) -> None:
        for name in ("num_clusters", "resolution", "channels", "hidden", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HetdiffError(f"RouterConfig.{name} must be a positive integer, got {value!r}")
        if self.num_clusters < 2:
            raise HetdiffError(f"a router needs num_clusters >= 2, got {self.num_clusters}")
        if self.hidden % 8:
            raise HetdiffError(f"RouterConfig.hidden must be a multiple of 8, got {self.hidden}")
        if isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise HetdiffError(f"num_classes must be >= 0 (0 = none), got {self.num_classes!r}")
        if self.context_dim is not None and self.context_dim < 1:
            raise HetdiffError(
                f"context_dim must be a positive integer or None, got {self.context_dim}"
            )
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise HetdiffError(f"time_scale must be a positive number, got {self.time_scale!r}")


#################################################################################
#                                   Network                                     #
#################################################################################


class FiLMBlock(nn.Module):
    """x + conv3x3(SiLU(GroupNorm(x) * (1 + scale) + shift)); (shift, scale) from emb (B, E)."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, width)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        shift, scale = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # 2 x (B, W, 1, 1)
        return x + self.conv(F.silu(torch.addcmul(shift, self.norm(x), 1 + scale)))


class Router(nn.Module):
    """``forward(x_t (B, C, H, W), t (B,) or scalar in [0, 1], cond) -> logits (B, K)``.

    ``cond``: a ``Conditioning`` / int64 labels / None. Class labels -1 (or none given) use the
    learned null class; a text context is mean-pooled over its real tokens, and rows without any
    real token (the null context) use a learned null vector. Conditions the router was not built
    for are ignored, so an unconditional router serves conditional experts.
    """

    def __init__(self, config: RouterConfig):
        super().__init__()
        self.config = config
        W, E = config.hidden, 2 * config.hidden
        self.time_mlp = nn.Sequential(nn.Linear(_FREQUENCY_SIZE, E), nn.SiLU(), nn.Linear(E, E))
        self.label_embed = LabelEmbedder(config.num_classes, E) if config.num_classes else None
        self.context_proj = self.null_context = None
        if config.context_dim is not None:
            self.context_proj = nn.Linear(config.context_dim, E)
            self.null_context = nn.Parameter(torch.zeros(E))
        stride = 2 if config.resolution >= 16 else 1
        self.stem = nn.Conv2d(config.channels, W, 3, stride=stride, padding=1)
        side = (config.resolution - 1) // stride + 1
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for _ in range(config.depth):
            self.blocks.append(FiLMBlock(W, E))
            down = side > 4
            self.downs.append(nn.Conv2d(W, W, 3, stride=2, padding=1) if down else nn.Identity())
            side = (side - 1) // 2 + 1 if down else side
        self.out_norm = nn.GroupNorm(8, W)
        self.head = nn.Linear(W, config.num_clusters)
        self.prior_head = nn.Linear(E, config.num_clusters)  # p(k | t, cond) without the image
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        nn.init.zeros_(self.prior_head.weight)
        nn.init.zeros_(self.prior_head.bias)

    def embed(self, t: Tensor, cond: Conditioning | None, batch: int) -> Tensor:
        """(B, E) embedding of time and condition."""
        weight = self.time_mlp[0].weight
        emb = self.time_mlp(
            timestep_embedding(t * self.config.time_scale, _FREQUENCY_SIZE).to(weight.dtype)
        )
        labels = None if cond is None else cond.class_labels
        if self.label_embed is not None:
            if labels is None:
                labels = torch.full((batch,), -1, dtype=torch.long, device=weight.device)
            if labels.numel() and (labels.min() < -1 or labels.max() >= self.config.num_classes):
                raise HetdiffError(
                    f"router class labels must be in [0, {self.config.num_classes}) or -1 (null), "
                    f"got range [{int(labels.min())}, {int(labels.max())}]"
                )
            emb = emb + self.label_embed(labels.to(weight.device))
        if self.context_proj is not None:
            emb = emb + self._pooled_context(cond, batch)
        return emb

    def _pooled_context(self, cond: Conditioning | None, batch: int) -> Tensor:
        null = self.null_context.expand(batch, -1)  # (B, E)
        if cond is None or cond.context is None:
            return null
        pooled, count = mean_of_real_tokens(cond.context, cond.context_mask, null.dtype)
        return torch.where(count > 0, self.context_proj(pooled), null)

    def forward(
        self, x: Tensor, t: Tensor | float, cond: Conditioning | Tensor | None = None
    ) -> Tensor:
        batch, dtype = x.shape[0], self.stem.weight.dtype
        t = router_inputs(self.config, x, t, dtype)
        cond = as_conditioning(cond)
        emb = self.embed(t, cond, batch)  # (B, E)
        h = self.stem(x.to(dtype))  # (B, W, H', W')
        for block, down in zip(self.blocks, self.downs, strict=True):
            h = down(block(h, emb))
        pooled = F.silu(self.out_norm(h)).mean(dim=(2, 3))  # (B, W)
        return self.head(pooled) + self.prior_head(F.silu(emb))  # (B, K)
