"""A diffusers ``DiffusionPipeline`` that samples an exported hetdiff ensemble.

    from hetdiff.pipeline.diffusers_pipeline import HetdiffEnsemblePipeline
    pipe = HetdiffEnsemblePipeline.from_pretrained("exported/", strategy="top1")
    images = pipe(num_images=8, steps=30, seed=0).images          # PIL images

``from_pretrained`` reads the tree ``hetdiff export --format diffusers`` writes (its experts are
diffusers' own modules, its router the hetdiff router in ``router/``); ``__call__`` runs the
same sampler as ``hetdiff sample`` (``sampling.generate``: image i from seed + i, the
ensemble's ``sample`` draws from a generator seeded by ``seed``), so for one seed, strategy,
solver and step count the images are those of ``hetdiff sample --experts TREE --router
TREE/router``.

diffusers' generic loader works too: ``DiffusionPipeline.from_pretrained(TREE,
custom_pipeline=TREE, trust_remote_code=True)`` runs the tree's ``pipeline.py`` (written by the
export: a subclass whose ``__init__`` names the tree's ``expert_k`` and ``router``), loads each
component with its own class's ``from_pretrained`` (``UNet2DModel``, ``PixArtTransformer2DModel``,
``HetdiffDiTModel``, ``HetdiffRouterModel``) and builds the same ensemble from them
(``ensemble_from_components``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from torch import nn

from hetdiff.errors import HetdiffError
from hetdiff.experts.diffusers_router import HetdiffRouterModel
from hetdiff.models.diffusers_dit import HetdiffDiTModel

OUTPUT_TYPES = ("pil", "np", "pt")


def ensemble_from_components(
    experts: Sequence[nn.Module],
    router: HetdiffRouterModel,
    strategy: str = "full",
    top_k: int = 2,
    top_p: float | None = None,
) -> tuple[Any, tuple[int, int, int], int, Any]:
    """(ensemble, image shape (C, H, W), classes, the first expert's spec) from the modules
    diffusers' loader built: each
    expert's hetdiff spec is read from the weights file it was loaded from (its config's
    ``_name_or_path``), its network is the loaded module itself (``HetdiffDiTModel``: its DiT);
    the same checks as ``load_ensemble`` (``check_experts_fit``). ``top_p`` of nucleus (None:
    the default, ``hetdiff.config.SampleSettings``)."""
    from hetdiff.experts.build import velocity_from_spec
    from hetdiff.experts.diffusers_import import WEIGHTS
    from hetdiff.experts.diffusers_model import is_diffusers_spec
    from hetdiff.experts.store import read_spec
    from hetdiff.models.diffusers_net import DiffusersNet
    from hetdiff.sampling.ensemble import TOP_P, Ensemble, check_experts_fit

    entries, velocities = [], []
    for module in experts:
        folder = Path(str(getattr(module, "config", {}).get("_name_or_path") or ""))
        if not (folder / WEIGHTS).is_file():
            raise HetdiffError(
                f"expert {type(module).__name__} was not loaded from an exported folder (no "
                f"{WEIGHTS} at {str(folder) or '?'}); load the tree with from_pretrained"
            )
        spec = read_spec(folder / WEIGHTS)
        name = type(module).__name__
        if isinstance(module, HetdiffDiTModel) and not is_diffusers_spec(spec):
            net: nn.Module = module.dit
        elif is_diffusers_spec(spec) and spec.model["class"] == name:
            net = DiffusersNet(module, name)
        else:
            raise HetdiffError(f"{folder}: the spec's network is not the loaded {name}; re-export")
        entries.append((folder / WEIGHTS, spec))
        velocities.append(velocity_from_spec(net.eval(), spec))
    check_experts_fit(entries, router.spec, Path("router"))
    ensemble = Ensemble(velocities, [spec.cluster_id for _, spec in entries], router.router,
                        router.spec.num_clusters, strategy=strategy, top_k=top_k,
                        generator=torch.Generator().manual_seed(0),
                        top_p=TOP_P if top_p is None else top_p)  # fmt: skip
    spec = entries[0][1]
    return ensemble, (spec.channels, spec.resolution, spec.resolution), spec.num_classes, spec


class HetdiffEnsemblePipeline(DiffusionPipeline):
    """Experts + router of an exported tree as one pipeline; ``ensemble`` is a
    ``sampling.ensemble.Ensemble`` (its experts' shape and classes come from their specs)."""

    def __init__(
        self, ensemble: Any, shape: tuple[int, int, int], num_classes: int = 0, spec: Any = None
    ) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.shape = tuple(shape)
        self.num_classes = int(num_classes)
        self.spec = spec  # an expert's ExpertSpec: its text encoder embeds prompts

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        strategy: str = "full",
        top_k: int = 2,
        device: str = "cpu",
        top_p: float | None = None,
        **_: Any,
    ) -> HetdiffEnsemblePipeline:
        """Load a tree written by ``hetdiff export`` (a local folder; nothing is downloaded)."""
        from hetdiff.experts.store import list_experts
        from hetdiff.pipeline.hub import load_exported

        tree = Path(pretrained_model_name_or_path)
        ensemble = load_exported(tree, device, strategy, top_k, top_p=top_p)
        spec = list_experts(tree)[0][1]
        shape = (spec.channels, spec.resolution, spec.resolution)
        return cls(ensemble, shape, spec.num_classes, spec)

    @property
    def device(self) -> torch.device:
        return next(self.ensemble.parameters()).device

    @torch.no_grad()
    def __call__(
        self,
        num_images: int = 1,
        steps: int = 30,
        solver: str = "heun",
        seed: int = 0,
        class_labels: list[int] | torch.Tensor | None = None,
        cfg: float = 1.0,
        shift: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        prompt: str | list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Sample ``num_images`` images (image i from seed ``seed + i``). ``class_labels``: one
        per image (class ensembles; default the classes in turn; -1 = the null class). ``cfg``
        != 1: classifier-free guidance v_null + cfg (v_cond - v_null), as ``hetdiff sample
        --cfg``. ``shift``: None = the experts' own grid (imported diffusers flow models: their
        scheduler's shifted sigmas), else our grid with that shift. ``output_type``: "pil",
        "np" (N, H, W, C) in [0, 1], or "pt" (N, C, H, W) in the model's own range. Text
        ensembles: ``prompt`` (one or a list), ``num_images`` each, embedded by the experts'
        text encoder (seeds seed, seed + 1, ... over all of them, as ``hetdiff sample``)."""
        from hetdiff.pipeline.sample import _prompt_conditioning
        from hetdiff.sampling.generate import class_labels_for, generate

        if output_type not in OUTPUT_TYPES:
            raise HetdiffError(f"output_type {output_type!r}; use one of {', '.join(OUTPUT_TYPES)}")
        cond = labels = None
        if self.spec is not None and (prompt is not None or self.spec.text_encoder is not None):
            prompts = [prompt] if isinstance(prompt, str) else prompt
            texts, cond = _prompt_conditioning(self.spec, num_images, prompts, None, None, "cpu")
            num_images *= len(texts)
        else:
            labels = class_labels_for(num_images, self.num_classes, None)
            if class_labels is not None:
                labels = torch.as_tensor(class_labels, dtype=torch.long)
        seeds = [seed + i for i in range(num_images)]
        self.ensemble.generator = torch.Generator().manual_seed(seed)
        images = generate(self.ensemble, self.shape, seeds, steps, solver, labels, cfg, shift,
                          device=self.device, cond=cond)  # fmt: skip
        if output_type != "pt":
            images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images.astype(np.float32))
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
