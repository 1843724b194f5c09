"""Export: the ensemble of a tiny heterogeneous run (two hetdiff flow DiTs, one imported DDPM
UNet2DModel) as a diffusers tree. Every expert_k/ loads with diffusers' from_pretrained and
computes our expert's network output; its scheduler config reads back as the same objective;
the diffusers pipeline draws the images `hetdiff sample` draws; the tree samples like the run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import PixArtTransformer2DModel, UNet2DModel
from PIL import Image

from expert_files import write_ddpm_expert
from hetdiff.cli import main
from hetdiff.data.montage import save_grid
from hetdiff.errors import HetdiffError
from hetdiff.experts.build import load_velocity_model
from hetdiff.experts.diffusers_export import pixart_config_for
from hetdiff.experts.diffusers_import import locate_diffusers_folder, spec_from_diffusers
from hetdiff.experts.router_store import RouterSpec, load_router, read_router_spec, save_router
from hetdiff.experts.store import list_experts, load_expert_model, read_spec
from hetdiff.models.router_transformer import TransformerRouter, transformer_router_config
from hetdiff.pipeline.diffusers_pipeline import HetdiffEnsemblePipeline
from hetdiff.pipeline.hub import export_command, load_exported
from hetdiff.sampling.ensemble import load_ensemble
from hetdiff.sampling.generate import generate
from hub_run import build_hub_run

CLASSES = {0: PixArtTransformer2DModel, 1: PixArtTransformer2DModel, 2: UNet2DModel}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-export")
    mp = pytest.MonkeyPatch()
    mp.setenv("HETDIFF_CACHE_DIR", str(root / "cache"))
    run = build_hub_run(root, perturb=True)
    (run / "metrics.json").write_text(json.dumps({"strategies": {"top1": {"fid": 12.5}}}))
    yield run, export_command(run, root / "tree")
    mp.undo()


def test_every_expert_loads_with_from_pretrained_and_computes_our_output(exported):
    run, tree = exported
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 8, 8, generator=gen)
    timestep = torch.tensor([20.0, 400.5, 900.0])
    for (path, spec), k in zip(list_experts(run / "experts"), CLASSES, strict=True):
        theirs = CLASSES[k].from_pretrained(str(tree / f"expert_{k}")).eval()
        ours, _ = load_expert_model(path)
        with torch.no_grad():
            expected = ours(x, timestep)
            if k == 2:
                actual = theirs(x, timestep).sample
            else:
                actual = theirs(x, timestep=timestep, added_cond_kwargs={"resolution": None,
                                "aspect_ratio": None}).sample  # fmt: skip
        err = float((actual - expected).abs().max())
        print(f"expert_{k} ({type(theirs).__name__}) vs our {spec.model['arch']} net: {err:.1e}")
        assert expected.abs().max() > 1e-3 and err < 1e-5
        # the scheduler config reads back as the expert's own objective
        again = spec_from_diffusers(locate_diffusers_folder(tree / f"expert_{k}"))
        fields = ("objective", "prediction", "schedule", "learned_variance", "time_scale")
        assert [getattr(again, f) for f in fields] == [getattr(spec, f) for f in fields]
        stored = read_spec(tree / f"expert_{k}" / "diffusion_pytorch_model.safetensors")
        assert stored.cluster_id == k and stored.steps == spec.steps


def test_model_card_and_index_describe_the_ensemble(exported):
    _, tree = exported
    card = (tree / "README.md").read_text()
    for text in ("| 0 | expert_0 | PixArtTransformer2DModel | flow | velocity | - | 4 |",
                 "| 2 | expert_2 | UNet2DModel | ddpm | x0 | cosine | 0 |",
                 '"fid": 12.5', "HetdiffEnsemblePipeline.from_pretrained"):  # fmt: skip
        assert text in card, card
    index = json.loads((tree / "model_index.json").read_text())
    assert index["_class_name"] == "HetdiffEnsemblePipeline"
    assert index["hetdiff"]["experts"] == {"expert_0": 0, "expert_1": 1, "expert_2": 2}
    assert json.loads((tree / "router" / "config.json").read_text())["arch"] == "film"


@pytest.mark.parametrize("strategy", ["full", "sample"])
def test_pipeline_draws_the_images_of_hetdiff_sample(exported, tmp_path, strategy):
    _, tree = exported
    grid = tmp_path / "cli.png"
    argv = ["sample", "--experts", str(tree), "--router", str(tree / "router"), "--n", "3",
            "--steps", "4", "--solver", "euler", "--seed", "5", "--strategy", strategy]  # fmt: skip
    assert main([*argv, "--out", str(grid)]) == 0
    pipe = HetdiffEnsemblePipeline.from_pretrained(tree, strategy=strategy)
    images = pipe(num_images=3, steps=4, solver="euler", seed=5, output_type="pt").images
    save_grid(images.clamp(-1, 1), tmp_path / "pipe.png")
    cli, ours = (np.asarray(Image.open(p)) for p in (grid, tmp_path / "pipe.png"))
    assert np.array_equal(cli, ours) and 0 < (images.abs() < 1).float().mean()
    print(f"{strategy}: {float((images.abs() < 1).float().mean()):.0%} of pixels unclipped")
    pil = pipe(num_images=2, steps=2, seed=5).images
    assert len(pil) == 2 and pil[0].size == (8, 8)


def test_export_then_load_gives_the_same_samples(exported):
    """The whole ensemble (its random DDPM UNet's 1/alpha near t = 1 makes samples large), and
    each flow expert alone, where the DiT -> PixArt mapping is all that differs."""
    run, tree = exported
    original = load_ensemble(run / "experts", run / "router", strategy="full")
    loaded = load_exported(tree, strategy="full")
    seeds = [0, 1, 2, 3]
    a = generate(original, (1, 8, 8), seeds, steps=6, solver="heun")
    b = generate(loaded, (1, 8, 8), seeds, steps=6, solver="heun")
    err = float((a - b).abs().max() / a.abs().max())
    print(f"ensemble, run vs exported tree, 4 samples, 6 Heun steps: rel. max |diff| {err:.1e}")
    assert a.abs().max() > 0.1 and err < 1e-6
    for k in (0, 1):
        ours, _ = load_velocity_model(run / "experts" / f"expert-{k}" / "expert.safetensors")
        file = tree / f"expert_{k}" / "diffusion_pytorch_model.safetensors"
        theirs, _ = load_velocity_model(file)
        a = generate(ours, (1, 8, 8), seeds, steps=6, solver="heun")
        b = generate(theirs, (1, 8, 8), seeds, steps=6, solver="heun")
        err = float((a - b).abs().max())
        print(f"flow expert {k}: our DiT vs exported PixArt, 6 Heun steps: max |diff| {err:.1e}")
        assert a.abs().max() > 0.1 and 0 < err < 1e-4


def test_what_pixart_cannot_represent_is_refused(tmp_path):
    spec = read_spec(write_ddpm_expert(tmp_path / "class.safetensors"))  # 10 classes
    with pytest.raises(HetdiffError, match="class labels .PixArt has no class-label path"):
        pixart_config_for(spec.model, "class.safetensors")
    text = dict(spec.model, num_classes=0, context_dim=8)
    with pytest.raises(HetdiffError, match="text .PixArt has no learned null key"):
        pixart_config_for(text, "text.safetensors")


def test_a_transformer_router_exports_and_loads_in_router(exported, tmp_path):
    run, _ = exported
    old = read_router_spec(run / "router")
    config = transformer_router_config("tiny", num_clusters=3, resolution=8, channels=1)
    torch.manual_seed(0)
    router = TransformerRouter(config)
    for param in router.parameters():
        param.data.normal_(0, 0.05)
    fields = {f.name: getattr(old, f.name) for f in dataclasses.fields(old)}
    for name in ("num_clusters", "partition_fingerprint", "resolution", "channels", "model",
                 "conditioning", "num_classes", "arch"):  # fmt: skip
        fields.pop(name)
    run2 = tmp_path / "run2"
    (run2 / "router").mkdir(parents=True)
    (run2 / "experts").symlink_to(run / "experts")
    spec = RouterSpec.for_config(config, old.partition_fingerprint, **fields)
    save_router(run2 / "router", router.state_dict(), spec)
    tree = export_command(run2, tmp_path / "tree")
    assert json.loads((tree / "router" / "config.json").read_text())["arch"] == "transformer"
    loaded, spec2 = load_router(tree / "router")
    assert isinstance(loaded, TransformerRouter) and spec2 == spec
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(
        loaded(x, torch.tensor([0.2, 0.7])), router(x, torch.tensor([0.2, 0.7]))
    )
    images = HetdiffEnsemblePipeline.from_pretrained(tree, strategy="top1")(
        num_images=2, steps=2, output_type="pt"
    ).images
    assert torch.isfinite(images).all()
