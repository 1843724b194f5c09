"""Image encoders from a local Hugging Face folder (``--encoder hf:PATH``): DINOv2 and CLIP vision.

The folder holds ``config.json`` and safetensors weights (``save_pretrained``); nothing is
downloaded (``local_files_only``). By ``model_type``:

- ``dinov2``: ``Dinov2Model``; the feature is the CLS token after the final layer norm
  (``pooler_output``), ``D = hidden_size``.
- ``clip_vision_model`` or ``clip``: ``CLIPVisionModel``; the feature is the post-layer-norm
  CLS token (``pooler_output``), ``D = vision hidden_size``.

Preprocessing of ``x`` in ``[-1, 1]``: ``(x + 1) / 2``, gray -> RGB, bilinear resize to the
model's ``image_size``, ``(x - mean) / std`` with the folder's ``preprocessor_config.json``
statistics when present, else ImageNet's (DINOv2) or CLIP's. The encoder key
``hf:<model_type>@<size>:<digest>`` names the weights by the sha256 of the config and weight
files (first 12 hex digits), so features of other weights never pass for these.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hetdiff.errors import HetdiffError

HF_PREFIX = "hf:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODEL_TYPES = ("dinov2", "clip_vision_model", "clip")


def folder_digest(folder: Path) -> str:
    """sha256 hex over ``config.json`` and every ``*.safetensors`` file (sorted by name)."""
    digest = hashlib.sha256(b"hetdiff-hf-encoder-v1")
    for path in [folder / "config.json", *sorted(folder.glob("*.safetensors"))]:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class HFImageEncoder:
    """A DINOv2 or CLIP vision model from a local folder, as an ``Encoder`` (see
    ``hetdiff.data.features``): ``(B, C, H, W)`` in ``[-1, 1]`` -> ``(B, D)`` float32."""

    def __init__(self, path: str) -> None:
        folder = Path(path).expanduser()
        config_path = folder / "config.json"
        if not config_path.is_file() or not list(folder.glob("*.safetensors")):
            raise HetdiffError(
                f"encoder hf:{path}: expected a folder with config.json and .safetensors "
                "weights (save_pretrained); nothing is downloaded"
            )
        config = json.loads(config_path.read_text())
        self.model_type = str(config.get("model_type"))
        if self.model_type not in MODEL_TYPES:
            raise HetdiffError(
                f"encoder hf:{path} is a {self.model_type!r} model; supported: "
                f"{', '.join(MODEL_TYPES)} (DINOv2 or CLIP vision)"
            )
        vision = config.get("vision_config", config) if self.model_type == "clip" else config
        self.folder = folder
        self.size = int(vision.get("image_size", 224))
        self.dim: int | None = int(vision["hidden_size"])
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.model_type == "dinov2" else (
            CLIP_MEAN, CLIP_STD
        )  # fmt: skip
        preprocessor = folder / "preprocessor_config.json"
        if preprocessor.is_file():
            stats = json.loads(preprocessor.read_text())
            mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.key = f"hf:{self.model_type}@{self.size}:{folder_digest(folder)[:12]}"
        self._model: torch.nn.Module | None = None

    def _network(self) -> torch.nn.Module:
        if self._model is None:
            import transformers

            cls = transformers.Dinov2Model if self.model_type == "dinov2" else (
                transformers.CLIPVisionModel
            )  # fmt: skip
            self._model = cls.from_pretrained(
                self.folder, local_files_only=True, use_safetensors=True
            ).eval()
        return self._model

    def fit(self, images: Tensor) -> None:
        """Nothing to fit: the network is pretrained."""

    def state(self) -> dict[str, np.ndarray]:
        return {}

    @torch.inference_mode()
    def encode(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` in ``[-1, 1]``, C in {1, 3} -> ``(B, D)`` CLS features, float32."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise HetdiffError(f"{self.key} needs images (B, 1 or 3, H, W), got {images.shape}")
        x = (images.float() + 1.0) / 2.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        output = self._network()(pixel_values=(x - self.mean) / self.std)
        return output.pooler_output.float()
