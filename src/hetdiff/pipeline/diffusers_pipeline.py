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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from hetdiff.errors import HetdiffError

OUTPUT_TYPES = ("pil", "np", "pt")


class HetdiffEnsemblePipeline(DiffusionPipeline):
    """Experts + router of an exported tree as one pipeline; ``ensemble`` is a
    ``sampling.ensemble.Ensemble`` (its experts' shape and classes come from their specs)."""

    def __init__(self, ensemble: Any, shape: tuple[int, int, int], num_classes: int = 0) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.shape = tuple(shape)
        self.num_classes = int(num_classes)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        strategy: str = "full",
        top_k: int = 2,
        device: str = "cpu",
        **_: Any,
    ) -> HetdiffEnsemblePipeline:
        """Load a tree written by ``hetdiff export`` (a local folder; nothing is downloaded)."""
        from hetdiff.experts.store import list_experts
        from hetdiff.pipeline.hub import load_exported

        tree = Path(pretrained_model_name_or_path)
        ensemble = load_exported(tree, device, strategy, top_k)
        spec = list_experts(tree)[0][1]
        return cls(ensemble, (spec.channels, spec.resolution, spec.resolution), spec.num_classes)

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
        shift: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample ``num_images`` images (image i from seed ``seed + i``). ``class_labels``: one
        per image (class ensembles; default the classes in turn). ``output_type``: "pil", "np"
        (N, H, W, C) in [0, 1], or "pt" (N, C, H, W) in the model's own range (about [-1, 1])."""
        from hetdiff.sampling.generate import class_labels_for, generate

        if output_type not in OUTPUT_TYPES:
            raise HetdiffError(f"output_type {output_type!r}; use one of {', '.join(OUTPUT_TYPES)}")
        seeds = [seed + i for i in range(num_images)]
        labels = class_labels_for(num_images, self.num_classes, None)
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, dtype=torch.long)
        self.ensemble.generator = torch.Generator().manual_seed(seed)
        images = generate(self.ensemble, self.shape, seeds, steps, solver, labels, cfg, shift,
                          device=self.device)  # fmt: skip
        if output_type != "pt":
            images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images.astype(np.float32))
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
