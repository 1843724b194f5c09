"""Latent experts: the autoencoder stage, the encode-once latent cache, save/load and decode."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from hetdiff.data.datasets import load_dataset
from hetdiff.errors import HetdiffError
from hetdiff.models.autoencoder import (
    IdentityAutoencoder,
    check_same_latent_space,
    load_autoencoder,
)
from hetdiff.training.latents import encode_dataset


def test_identity_autoencoder_is_pixel_space() -> None:
    data = load_dataset("digits")
    ae = load_autoencoder(None)
    assert isinstance(ae, IdentityAutoencoder) and ae.to_dict() is None
    assert encode_dataset(data, ae) is data
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(ae.decode(ae.encode(x)), x)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory) -> Path:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
        scaling_factor=0.5,
    )
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def test_kl_autoencoder_reloads_with_its_scaling_factor(tiny_vae_dir: Path) -> None:
    from diffusers import AutoencoderKL

    ae = load_autoencoder(str(tiny_vae_dir))
    assert ae.scaling_factor == 0.5 and ae.downsample == 2
    assert ae.latent_shape(1, 8) == (4, 4, 4)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    z = ae.encode(x)
    reference = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    with torch.no_grad():
        expected = reference.encode(x).latent_dist.mean * 0.5
        decoded = reference.decode(z / 0.5).sample
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(ae.decode(z), decoded)
    again = load_autoencoder(ae.to_dict())  # the spec dict rebuilds the same latent space
    assert again.to_dict() == ae.to_dict()
    with pytest.raises(HetdiffError, match="not divisible"):
        ae.latent_shape(1, 9)
    with pytest.raises(HetdiffError, match="1-channel"):
        ae.latent_shape(3, 8)
    with pytest.raises(HetdiffError, match="changed since"):
        load_autoencoder({**ae.to_dict(), "digest": "0" * 32})
    with pytest.raises(HetdiffError, match="config.json"):
        load_autoencoder(str(tiny_vae_dir / "missing"))


def test_latents_are_encoded_once_and_cached(tiny_vae_dir: Path, tmp_path: Path, monkeypatch):
    data = load_dataset("digits")
    data = data.subset(data.ids[:40])
    ae = load_autoencoder(str(tiny_vae_dir))
    latent = encode_dataset(data, ae, tmp_path, batch_size=16)
    assert latent.images.shape == (40, 4, 4, 4)
    assert torch.equal(latent.ids, data.ids) and torch.equal(latent.labels, data.labels)
    assert latent.fingerprint != data.fingerprint
    torch.testing.assert_close(latent.images[:5], ae.encode(data.images[:5]))
    monkeypatch.setattr(type(ae), "encode", lambda *a: pytest.fail("encoded twice"))
    cached = encode_dataset(data, ae, tmp_path)
    assert torch.equal(cached.images, latent.images) and cached.fingerprint == latent.fingerprint


def test_latent_expert_round_trips_and_samples_through_decode(tiny_vae_dir: Path, tmp_path: Path):
    from hetdiff.config import ExpertSettings
    from hetdiff.experts.build import velocity_from_spec
    from hetdiff.experts.store import load_expert_model
    from hetdiff.sampling.generate import generate
    from hetdiff.training.expert import train_expert

    ae = load_autoencoder(str(tiny_vae_dir))
    data = load_dataset("digits")
    latent = encode_dataset(data.subset(data.ids[:64]), ae, tmp_path / "cache")
    settings = ExpertSettings(
        model="tiny", steps=3, batch_size=8, checkpoint_every=3, progress=False,
        mixed_precision="no",
    )  # fmt: skip
    ckpt = train_expert(latent, settings, tmp_path / "expert", autoencoder=ae.to_dict())
    net, spec = load_expert_model(ckpt)
    assert spec.autoencoder == ae.to_dict() and (spec.channels, spec.resolution) == (4, 4)
    decoder = load_autoencoder(spec.autoencoder)
    velocity = velocity_from_spec(net, spec)
    labels = torch.tensor([1, 2])
    images = generate(velocity, (4, 4, 4), [0, 1], 2, "euler", labels, decode=decoder.decode)
    latents = generate(velocity, (4, 4, 4), [0, 1], 2, "euler", labels)
    assert images.shape == (2, 1, 8, 8)
    torch.testing.assert_close(images, ae.decode(latents))

    pixel_spec = dataclasses.replace(spec, autoencoder=None)
    with pytest.raises(HetdiffError, match="different latent spaces"):
        check_same_latent_space([spec, pixel_spec])
    assert check_same_latent_space([spec, spec]) == ae.to_dict()
