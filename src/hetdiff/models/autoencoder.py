"""The autoencoder stage of latent experts, behind one interface: identity or a diffusers KL VAE.

    z = (E(x) - shift) * scale,      x = D(z / scale + shift)

x: pixels (B, C, S, S) in [-1, 1]; z: latents (B, c, S / f, S / f). Experts, router, clustering
and distillation see only z: a latent expert is an ordinary expert whose "images" are latents,
and sampling decodes at the end. ``IdentityAutoencoder`` (pixel space, the default) is z = x.
``KLAutoencoder`` wraps a diffusers ``AutoencoderKL`` saved in a local folder (the optional extra
``hetdiff[latent]``); it encodes to the posterior mean (deterministic, so a latent cache is
exact) and uses the folder's ``scaling_factor`` / ``shift_factor`` unless overridden.

An expert spec records ``autoencoder.to_dict()`` (None for pixels); ``load_autoencoder`` rebuilds
it and refuses a folder whose weights changed since (its digest is part of the dict).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hetdiff.errors import HetdiffError


class IdentityAutoencoder:
    """Pixel space: encode and decode are the identity."""

    kind = "identity"
    downsample = 1

    def latent_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        """(c, h, w) of the latents of (channels, resolution, resolution) images."""
        return channels, resolution, resolution

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, latents: Tensor) -> Tensor:
        return latents

    def to_dict(self) -> dict[str, Any] | None:
        return None


class KLAutoencoder:
    """A diffusers ``AutoencoderKL`` from ``path``, with z = (mean(E(x)) - shift) * scale."""

    kind = "diffusers-kl"

    def __init__(
        self,
        path: str | Path,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise HetdiffError(
                f"autoencoder {str(path)!r} is not a folder with config.json; give a folder "
                "saved by diffusers' AutoencoderKL.save_pretrained"
            )
        try:
            from diffusers import AutoencoderKL
        except ImportError as err:
            raise HetdiffError(
                "latent experts need diffusers; pip install 'hetdiff[latent]'"
            ) from err
        try:
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise HetdiffError(
                f"{path} is not a diffusers AutoencoderKL folder ({str(err).splitlines()[0][:160]})"
            ) from err
        self.vae = vae.to(device).eval().float()
        self.path = path.resolve()
        config = self.vae.config
        self.scaling_factor = float(
            scaling_factor if scaling_factor is not None else config.scaling_factor
        )
        self.shift_factor = float(
            shift_factor if shift_factor is not None else (config.get("shift_factor") or 0.0)
        )
        self.in_channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.digest = _weights_digest(self.path)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def latent_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        if channels != self.in_channels:
            raise HetdiffError(
                f"the autoencoder takes {self.in_channels}-channel images, the data has "
                f"{channels}; load the data with channels={self.in_channels}"
            )
        if resolution % self.downsample:
            raise HetdiffError(
                f"resolution {resolution} is not divisible by the autoencoder's downsampling "
                f"factor {self.downsample}; pick a multiple of {self.downsample}"
            )
        side = resolution // self.downsample
        return self.latent_channels, side, side

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, C, S, S) in [-1, 1] -> (B, c, S/f, S/f) scaled latents."""
        self.latent_shape(images.shape[1], images.shape[-1])
        mean = self.vae.encode(images.to(self.device, torch.float32)).latent_dist.mean
        return ((mean - self.shift_factor) * self.scaling_factor).to(images.device)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """(B, c, h, w) scaled latents -> (B, C, h f, w f) pixels (not clamped)."""
        z = latents.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.to(latents.device)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready identity for expert specs."""
        return {
            "kind": self.kind,
            "path": str(self.path),
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "in_channels": self.in_channels,
            "latent_channels": self.latent_channels,
            "downsample": self.downsample,
            "digest": self.digest,
        }


Autoencoder = IdentityAutoencoder | KLAutoencoder


def _weights_digest(path: Path) -> str:
    """sha256 of the folder's config and weight files (the latent space's identity)."""
    digest = hashlib.sha256(b"hetdiff-autoencoder-v1")
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix in (".json", ".safetensors", ".bin"):
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:32]


def load_autoencoder(
    source: str | Path | dict[str, Any] | None, device: torch.device | str = "cpu"
) -> Autoencoder:
    """None or "identity" -> pixels; a folder path -> KLAutoencoder; a spec dict -> the same
    autoencoder again, refused with a one-line error if the folder's weights changed."""
    if source is None or source == "identity":
        return IdentityAutoencoder()
    if isinstance(source, dict):
        if source.get("kind") != KLAutoencoder.kind:
            raise HetdiffError(f"unknown autoencoder kind {source.get('kind')!r}; use diffusers-kl")
        ae = KLAutoencoder(
            source["path"], source["scaling_factor"], source["shift_factor"], device=device
        )
        if ae.digest != source.get("digest"):
            raise HetdiffError(
                f"the autoencoder at {source['path']} changed since the expert was trained "
                "(weights digest differs); restore that folder or retrain the expert"
            )
        return ae
    return KLAutoencoder(source, device=device)


def check_same_latent_space(specs: Sequence[Any]) -> dict[str, Any] | None:
    """The one autoencoder dict of an ensemble's expert specs (None: pixel space); experts in
    different latent spaces are a one-line error."""
    found = {latent_space_name(getattr(spec, "autoencoder", None)) for spec in specs}
    if len(found) > 1:
        raise HetdiffError(
            "the experts live in different latent spaces (autoencoders "
            f"{', '.join(sorted(found))}); an ensemble needs one: retrain with the same "
            "--autoencoder"
        )
    return getattr(specs[0], "autoencoder", None) if specs else None


def latent_space_name(ae: dict[str, Any] | None) -> str:
    """A short name of the space an expert spec's ``autoencoder`` dict puts its images in:
    "pixels", or "<folder>@<digest prefix>x<scaling factor>"."""
    if ae is None:
        return "pixels"
    return f"{ae.get('path')}@{str(ae.get('digest'))[:8]}x{ae.get('scaling_factor')}"
