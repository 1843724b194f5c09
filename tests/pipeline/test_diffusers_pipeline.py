"""The diffusers pipeline over an exported class-conditional ensemble (two hetdiff DiT experts,
flow and DDPM eps, with class labels; a class router): every expert_k loads with
HetdiffDiTModel.from_pretrained and computes our network; export then load samples the same;
the pipeline samples with classifier-free guidance exactly as `hetdiff sample`; diffusers'
generic DiffusionPipeline.from_pretrained(custom_pipeline=TREE) loads the tree (this one and
the mixed PixArt + UNet2DModel tree of the hub run) and draws the same images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.utils import dynamic_modules_utils
from PIL import Image

from hetdiff.cli import main
from hetdiff.conditioning import Conditioning
from hetdiff.data.montage import save_grid
from hetdiff.experts.diffusers_import import (
    import_diffusers_expert,
    locate_diffusers_folder,
    spec_from_diffusers,
)
from hetdiff.experts.diffusers_router import HetdiffRouterModel
from hetdiff.experts.store import list_experts, load_expert_model, read_spec
from hetdiff.models.diffusers_dit import HetdiffDiTModel
from hetdiff.pipeline.diffusers_pipeline import HetdiffEnsemblePipeline
from hetdiff.pipeline.hub import export_command, load_exported
from hetdiff.sampling.ensemble import load_ensemble
from hetdiff.sampling.generate import generate
from hub_run import build_class_run, build_hub_run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("class-export")
    mp = pytest.MonkeyPatch()
    mp.setenv("HETDIFF_CACHE_DIR", str(root / "cache"))
    # diffusers copies a custom pipeline into its modules cache: keep it in this test's folder
    mp.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(root / "hf-modules"))
    run = build_class_run(root)
    yield run, export_command(run, root / "tree")
    mp.undo()


def test_class_experts_load_with_from_pretrained_and_compute_our_network(exported, tmp_path):
    run, tree = exported
    index = json.loads((tree / "model_index.json").read_text())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=gen)
    timestep = torch.tensor([20.0, 400.5, 900.0, 999.0])
    labels = torch.tensor([3, -1, 9, 0])
    for path, spec in list_experts(run / "experts"):
        folder = tree / f"expert_{spec.cluster_id}"
        assert index[folder.name] == ["hetdiff.models.diffusers_dit", "HetdiffDiTModel"]
        theirs = HetdiffDiTModel.from_pretrained(str(folder)).eval()
        ours, _ = load_expert_model(path)
        with torch.no_grad():
            expected, actual = ours(x, timestep, labels), theirs(x, timestep, labels).sample
        err = float((actual - expected).abs().max())
        print(f"{folder.name} ({spec.objective}): HetdiffDiTModel vs our DiT: max |diff| {err:.1e}")
        assert expected.abs().max() > 1e-2 and err < 1e-6
        again = spec_from_diffusers(locate_diffusers_folder(folder))
        fields = ("objective", "prediction", "schedule", "learned_variance", "time_scale")
        assert [getattr(again, f) for f in fields] == [getattr(spec, f) for f in fields]
        assert read_spec(folder / "diffusion_pytorch_model.safetensors") == spec
        # `hetdiff import-expert` reads the exported folder back as our DiT
        imported, again = import_diffusers_expert(folder, tmp_path / folder.name, 5)
        assert again.model == {k: v for k, v in spec.model.items() if k != "name"}
        assert (again.num_classes, again.objective) == (10, spec.objective)
        with torch.no_grad():
            assert torch.equal(load_expert_model(imported)[0](x, timestep, labels), expected)
    card = (tree / "README.md").read_text()
    assert "| 1 | expert_1 | HetdiffDiTModel | ddpm | eps | linear | 2 |" in card, card


def test_export_then_load_gives_the_same_guided_samples(exported):
    run, tree = exported
    labels = torch.tensor([0, 4, 7, -1])
    for strategy in ("full", "top1"):
        original = load_ensemble(run / "experts", run / "router", strategy=strategy)
        loaded = load_exported(tree, strategy=strategy)
        a = generate(original, (1, 8, 8), [0, 1, 2, 3], 5, "heun", labels, cfg=2.0)
        b = generate(loaded, (1, 8, 8), [0, 1, 2, 3], 5, "heun", labels, cfg=2.0)
        print(f"{strategy}: run vs exported tree, cfg 2, 5 Heun steps: |a| max "
              f"{float(a.abs().max()):.2f}, max |diff| {float((a - b).abs().max()):.1e}")  # fmt: skip
        assert a.abs().max() > 0.1 and torch.equal(a, b)


@pytest.mark.parametrize("strategy", ["full", "sample"])
def test_pipeline_with_guidance_draws_the_images_of_hetdiff_sample(exported, tmp_path, strategy):
    _, tree = exported
    grid = tmp_path / "cli.png"
    argv = ["sample", "--experts", str(tree), "--router", str(tree / "router"), "--n", "4",
            "--steps", "4", "--solver", "euler", "--seed", "3", "--strategy", strategy,
            "--cfg", "2.5", "--class", "7", "--out", str(grid)]  # fmt: skip
    assert main(argv) == 0
    pipe = HetdiffEnsemblePipeline.from_pretrained(tree, strategy=strategy)
    images = pipe(num_images=4, steps=4, solver="euler", seed=3, cfg=2.5, class_labels=[7] * 4,
                  output_type="pt").images  # fmt: skip
    save_grid(images.clamp(-1, 1), tmp_path / "pipe.png")
    cli, ours = (np.asarray(Image.open(p)) for p in (grid, tmp_path / "pipe.png"))
    assert np.array_equal(cli, ours) and cli.std() > 0
    unguided = pipe(num_images=4, steps=4, solver="euler", seed=3, class_labels=[7] * 4,
                    output_type="pt").images  # fmt: skip
    assert float((unguided - images).abs().max()) > 1e-3  # guidance changes the images


def _generic(tree, **kwargs):
    return DiffusionPipeline.from_pretrained(
        str(tree), custom_pipeline=str(tree), trust_remote_code=True, **kwargs
    )


def test_diffusers_generic_loader_loads_the_tree(exported):
    _, tree = exported
    pipe = _generic(tree, strategy="top1")
    assert isinstance(pipe, HetdiffEnsemblePipeline) and set(pipe.components) == {
        "expert_0", "expert_1", "router"
    }  # fmt: skip
    assert isinstance(pipe.expert_1, HetdiffDiTModel)
    assert isinstance(pipe.router, HetdiffRouterModel)
    ours = HetdiffEnsemblePipeline.from_pretrained(tree, strategy="top1")
    kwargs = dict(num_images=3, steps=4, seed=11, cfg=1.5, class_labels=[1, 2, 3], output_type="pt")
    a, b = pipe(**kwargs).images, ours(**kwargs).images
    print(f"generic loader vs HetdiffEnsemblePipeline.from_pretrained: max |diff| "
          f"{float((a - b).abs().max()):.1e}")  # fmt: skip
    assert torch.equal(a, b) and a.abs().max() > 0.1
    by_name = DiffusionPipeline.from_pretrained(
        str(tree), custom_pipeline="pipeline", trust_remote_code=True, strategy="top1"
    )  # the file's name, resolved inside the tree
    assert torch.equal(by_name(**kwargs).images, a)
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(str(tree), custom_pipeline=str(tree))


def test_diffusers_generic_loader_loads_a_pixart_and_unet_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("HETDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    tree = export_command(build_hub_run(tmp_path, perturb=True), tmp_path / "tree")
    pipe = _generic(tree, strategy="full")
    assert isinstance(pipe.expert_2, UNet2DModel)
    assert type(pipe.expert_0).__name__ == "PixArtTransformer2DModel"
    ours = HetdiffEnsemblePipeline.from_pretrained(tree, strategy="full")
    kwargs = dict(num_images=2, steps=3, seed=0, output_type="pt")
    assert torch.equal(pipe(**kwargs).images, ours(**kwargs).images)


def test_a_cli_trained_transformer_router_exports_and_loads(tmp_path, monkeypatch):
    """`train-router --router-arch transformer --router-size tiny` trains the transformer
    router; the export writes it in router/, where hetdiff and diffusers' loader read it back."""
    from hetdiff.experts.router_store import load_router
    from hetdiff.models.router_transformer import TransformerRouter

    monkeypatch.setenv("HETDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    run = build_class_run(tmp_path, ("--router-arch", "transformer", "--router-size", "tiny"))
    trained, spec = load_router(run / "router")
    assert isinstance(trained, TransformerRouter) and spec.arch == "transformer"
    assert spec.conditioning == "class" and spec.steps == 6
    tree = export_command(run, tmp_path / "tree")
    assert json.loads((tree / "router" / "config.json").read_text())["arch"] == "transformer"
    component = HetdiffRouterModel.from_pretrained(tree / "router")
    assert isinstance(component.router, TransformerRouter) and component.spec == spec
    x, t, labels = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 0.9]), torch.tensor([1, -1, 5])
    with torch.no_grad():
        assert torch.equal(component(x, t, labels), trained(x, t, labels))
    pipe = _generic(tree, strategy="top1")
    ours = HetdiffEnsemblePipeline.from_pretrained(tree, strategy="top1")
    kwargs = dict(num_images=2, steps=3, seed=1, cfg=2.0, output_type="pt")
    assert torch.equal(pipe(**kwargs).images, ours(**kwargs).images)


def test_a_text_ensemble_exports_and_samples_its_prompts(tmp_path, monkeypatch):
    """Text experts (hash encoder, cross-attention and the learned null key) export as
    HetdiffDiTModel; the pipeline's prompts draw the images of `hetdiff sample --prompt`."""
    monkeypatch.setenv("HETDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    text = ("--text-encoder", "hash")
    run = build_class_run(tmp_path, text, text)
    tree = export_command(run, tmp_path / "tree")
    path, spec = list_experts(run / "experts")[1]
    assert spec.text_encoder == "hash" and spec.model["context_dim"]
    theirs = HetdiffDiTModel.from_pretrained(str(tree / "expert_1")).eval()
    ours, _ = load_expert_model(path)
    gen = torch.Generator().manual_seed(0)
    x, context = (
        torch.randn(2, 1, 8, 8, generator=gen),
        torch.randn(2, 3, spec.model["context_dim"]),
    )
    mask = torch.tensor([[True, True, False], [False, False, False]])
    with torch.no_grad():
        expected = ours(x, torch.tensor([5.0, 700.0]), Conditioning(context=context,
                        context_mask=mask))  # fmt: skip
        actual = theirs(x, torch.tensor([5.0, 700.0]), encoder_hidden_states=context,
                        encoder_attention_mask=mask.float()).sample  # fmt: skip
    assert expected.abs().max() > 1e-2 and float((actual - expected).abs().max()) < 1e-6
    grid = tmp_path / "cli.png"
    argv = ["sample", "--experts", str(tree), "--router", str(tree / "router"), "--n", "2",
            "--steps", "3", "--solver", "euler", "--seed", "2", "--cfg", "2",
            "--prompt", "a three", "--prompt", "a seven", "--out", str(grid)]  # fmt: skip
    assert main(argv) == 0
    for pipe in (HetdiffEnsemblePipeline.from_pretrained(tree), _generic(tree)):
        images = pipe(num_images=2, steps=3, solver="euler", seed=2, cfg=2.0,
                      prompt=["a three", "a seven"], output_type="pt").images  # fmt: skip
        assert images.shape == (4, 1, 8, 8)
        save_grid(images.clamp(-1, 1), tmp_path / "pipe.png", nrow=2)
        cli, mine = (np.asarray(Image.open(p)) for p in (grid, tmp_path / "pipe.png"))
        assert np.array_equal(cli, mine) and cli.std() > 0
