"""An ensemble as a diffusers-style tree, readable by diffusers and by hetdiff alike.

    OUT/model_index.json                     pipeline class, experts, clusters (hetdiff block)
    OUT/expert_k/config.json                 diffusers model config (k = cluster id)
    OUT/expert_k/diffusion_pytorch_model.safetensors
                                             the weights under diffusers' own keys; the metadata
                                             also carries the hetdiff spec (and its digest), so
                                             the folder is an expert registry as it stands
    OUT/expert_k/scheduler/scheduler_config.json
                                             DDPMScheduler or FlowMatchEulerDiscreteScheduler
                                             with the expert's real settings
    OUT/router/router.safetensors, config.json   the router checkpoint and its spec
    OUT/README.md                            the model card

Our AdaLN-Single DiT maps exactly onto diffusers' ``PixArtTransformer2DModel`` (``dit_to_pixart``,
the inverse of the mapping tests/models/test_dit.py checks): the patch conv, the timestep MLP,
the shared t_block (``adaln_single.linear``), per-block (6, D) tables, the fused qkv split into
to_q/to_k/to_v, the MLP and the final (2, D) table and Linear. PixArt has no class-label path and
no learned null key, so class-conditional, text, pooled-caption, adaLN-Zero and mlp_ratio != 4
DiTs are written as ``HetdiffDiTModel`` (``models/diffusers_dit.py``: a diffusers ``ModelMixin,
ConfigMixin`` holding our DiT, our own keys and config), which diffusers' ``from_pretrained``
loads once ``hetdiff`` is installed; their spec keeps our DiT's model dict. Imported diffusers
experts are written back as their own class.

    OUT/pipeline.py                          the custom pipeline for diffusers' generic loader:
        DiffusionPipeline.from_pretrained(OUT, custom_pipeline=OUT, trust_remote_code=True)
        (a subclass of ``HetdiffEnsemblePipeline`` whose ``__init__`` names this tree's
        components, ``expert_k`` and ``router``, as diffusers requires)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.experts.diffusers_import import (
    MODEL_CONFIG,
    SCHEDULER_CONFIG,
    WEIGHTS,
    scheduler_config_for,
)
from hetdiff.experts.diffusers_model import diffusers_model_dict, is_diffusers_spec
from hetdiff.experts.diffusers_router import ROUTER_CLASS, ROUTER_LIBRARY
from hetdiff.experts.spec import ExpertSpec
from hetdiff.models.diffusers_dit import (
    HETDIFF_DIT_CLASS,
    HETDIFF_DIT_LIBRARY,
    HetdiffDiTModel,
    hetdiff_dit_config,
)
from hetdiff.models.diffusers_net import PIXART, build_diffusers_module

PIPELINE_CLASS = "HetdiffEnsemblePipeline"
PIPELINE_FILE = "pipeline.py"  # diffusers' CUSTOM_PIPELINE_FILE_NAME: custom_pipeline=OUT finds it
ROUTER_FOLDER = "router"


def expert_folder(cluster_id: int) -> str:
    """The tree's folder of the expert serving ``cluster_id``: ``expert_{k}``."""
    return f"expert_{cluster_id}"


# --------------------------------------------------------------------------------------------
# Our DiT -> PixArtTransformer2DModel
# --------------------------------------------------------------------------------------------


def _pixart_refusals(model: dict[str, Any]) -> list[str]:
    """What of a DiT model dict PixArtTransformer2DModel cannot represent (empty: it maps)."""
    refusals = (
        (model.get("modulation", "adaln-single") != "adaln-single", "adaLN-Zero modulation"),
        (model.get("num_classes", 0) > 0, "class labels (PixArt has no class-label path)"),
        (model.get("context_dim") is not None, "text (PixArt has no learned null key)"),
        (float(model.get("mlp_ratio", 4.0)) != 4.0, f"mlp_ratio {model.get('mlp_ratio')}"),
    )
    return [what for refused, what in refusals if refused]


def pixart_config_for(model: dict[str, Any], where: str) -> dict[str, Any]:
    """The PixArtTransformer2DModel config of one of our DiT model dicts; one-line errors for
    what PixArt cannot represent (class labels, text, pooled captions, adaLN-Zero, mlp_ratio)."""
    refusals = _pixart_refusals(model)
    if refusals:
        raise HetdiffError(
            f"{where}: a DiT with {refusals[0]} has no exact diffusers PixArtTransformer2DModel "
            f"form; export it as {HETDIFF_DIT_CLASS}"
        )
    hidden, heads, channels = model["hidden_size"], model["num_heads"], model["in_channels"]
    return {
        "num_attention_heads": heads,
        "attention_head_dim": hidden // heads,
        "in_channels": channels,
        "out_channels": 2 * channels if model.get("learned_sigma") else channels,
        "num_layers": model["depth"],
        "sample_size": model["input_size"],
        "patch_size": model["patch_size"],
        "cross_attention_dim": None,
        "caption_channels": None,
        "use_additional_conditions": False,
        "interpolation_scale": 1,
        "norm_eps": 1e-6,
    }


def dit_to_pixart(state: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Our DiT state dict -> PixArtTransformer2DModel's (same tensors, renamed; qkv split)."""
    pairs = {
        "pos_embed.proj": "x_embedder.proj",
        "adaln_single.linear": "t_block.1",
        "adaln_single.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "adaln_single.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "proj_out": "final_layer.linear",
    }
    out = {"scale_shift_table": state["final_layer.scale_shift_table"]}
    for i in range(depth):
        theirs, ours = f"transformer_blocks.{i}.", f"blocks.{i}."
        out[theirs + "scale_shift_table"] = state[ours + "scale_shift_table"]
        pairs |= {
            theirs + "attn1.to_out.0": ours + "attn.proj",
            theirs + "ff.net.0.proj": ours + "mlp.fc1",
            theirs + "ff.net.2": ours + "mlp.fc2",
        }
        for kind in ("weight", "bias"):
            q, k, v = state[f"{ours}attn.qkv.{kind}"].chunk(3, dim=0)
            for name, part in zip("qkv", (q, k, v), strict=True):
                out[f"{theirs}attn1.to_{name}.{kind}"] = part.contiguous()
    for theirs, ours in pairs.items():
        for kind in ("weight", "bias"):
            out[f"{theirs}.{kind}"] = state[f"{ours}.{kind}"]
    return {name: tensor.detach().clone() for name, tensor in out.items()}


def diffusers_form(
    state: dict[str, Tensor], spec: ExpertSpec, where: str
) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
    """(diffusers class, its config, its state dict) of an expert: unchanged for an imported
    diffusers expert; ``PixArtTransformer2DModel`` for our DiT where it maps, else
    ``HetdiffDiTModel`` (our keys and config); checked by a strict load."""
    if is_diffusers_spec(spec):
        return spec.model["class"], dict(spec.model["config"]), dict(state)
    if spec.model.get("arch") != "dit":
        raise HetdiffError(f"{where}: model arch {spec.model.get('arch')!r} cannot be exported")
    if _pixart_refusals(spec.model):
        config = hetdiff_dit_config(spec.model)
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in HetdiffDiTModel(**config).state_dict().items()}
        if shapes != {k: v.shape for k, v in state.items()}:
            raise HetdiffError(f"{where}: the weights do not fit the spec's DiT; re-save it")
        return HETDIFF_DIT_CLASS, config, dict(state)
    config = pixart_config_for(spec.model, where)
    mapped = dit_to_pixart(state, spec.model["depth"])
    module = build_diffusers_module(PIXART, config)
    try:
        module.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        raise HetdiffError(f"{where}: the PixArt mapping does not fit ({err})") from None
    return PIXART, dict(module.config), mapped


# --------------------------------------------------------------------------------------------
# One expert folder
# --------------------------------------------------------------------------------------------


def write_expert_folder(folder: Path, state: dict[str, Tensor], spec: ExpertSpec) -> ExpertSpec:
    """Write ``folder/{config.json, diffusion_pytorch_model.safetensors, scheduler/}`` for one
    expert; returns the spec stored in the weights file (its network: the diffusers class)."""
    import diffusers

    from hetdiff.experts.store import save_expert

    class_name, config, mapped = diffusers_form(state, spec, str(folder))
    config = {**config, "_class_name": class_name, "_diffusers_version": diffusers.__version__}
    scheduler = scheduler_config_for(spec)  # the objective read from the original spec
    exported = spec  # HetdiffDiTModel: our DiT, its spec as it was
    if class_name != HETDIFF_DIT_CLASS:
        exported = dataclasses.replace(
            spec,
            model=diffusers_model_dict(class_name, config),
            provenance={**spec.provenance, "exported_from": dict(spec.model)},
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "scheduler").mkdir(exist_ok=True)
    text = json.dumps(scheduler, indent=2, sort_keys=True) + "\n"
    (folder / "scheduler" / SCHEDULER_CONFIG).write_text(text)
    save_expert(folder / WEIGHTS, {k: v.to(torch.float32) for k, v in mapped.items()}, exported)
    return exported


def model_index(specs: list[ExpertSpec], router: dict[str, Any]) -> dict[str, Any]:
    """model_index.json: the pipeline class, each expert_k and the router as [library, class]
    (what diffusers' generic loader imports), and a hetdiff block (clusters, router, versions)
    for readers that are not diffusers."""
    import diffusers

    import hetdiff

    index: dict[str, Any] = {"_class_name": PIPELINE_CLASS,
                             "_diffusers_version": diffusers.__version__}  # fmt: skip
    for spec in specs:
        index[expert_folder(spec.cluster_id)] = list(exported_component(spec))
    index[ROUTER_FOLDER] = [ROUTER_LIBRARY, ROUTER_CLASS]
    index["hetdiff"] = {
        "version": hetdiff.__version__,
        "num_clusters": router["num_clusters"],
        "experts": {expert_folder(s.cluster_id): s.cluster_id for s in specs},
        "router": f"{ROUTER_FOLDER}/router.safetensors",
        "load_with": "hetdiff.pipeline.diffusers_pipeline.HetdiffEnsemblePipeline.from_pretrained",
    }
    return index


def exported_component(spec: ExpertSpec) -> tuple[str, str]:
    """(library, class) of an exported expert's folder: ("diffusers", its class) for diffusers'
    own classes, (``hetdiff.models.diffusers_dit``, "HetdiffDiTModel") for our DiT."""
    if is_diffusers_spec(spec):
        return "diffusers", spec.model["class"]
    return HETDIFF_DIT_LIBRARY, HETDIFF_DIT_CLASS


def pipeline_source(specs: list[ExpertSpec]) -> str:
    """``pipeline.py``: a ``HetdiffEnsemblePipeline`` subclass whose ``__init__`` names this
    tree's components (diffusers' generic loader passes exactly the ``__init__`` parameters
    that model_index.json lists). The base class is reached through its module so that the file
    defines exactly one ``DiffusionPipeline`` subclass (what diffusers looks for)."""
    names = [expert_folder(spec.cluster_id) for spec in specs]
    params = "".join(f"        {name}: ModelMixin,\n" for name in names)
    return (
        '"""Written by `hetdiff export`: the custom pipeline of this tree for diffusers\'\n'
        "generic loader (needs `pip install hetdiff`):\n\n"
        "    DiffusionPipeline.from_pretrained(TREE, custom_pipeline=TREE, trust_remote_code=True)\n"
        '"""\n\n'
        "from diffusers import ModelMixin\n\n"
        "import hetdiff.pipeline.diffusers_pipeline as hetdiff_pipeline\n\n\n"
        f"class {PIPELINE_CLASS}(hetdiff_pipeline.{PIPELINE_CLASS}):\n"
        "    def __init__(\n        self,\n"
        f"{params}"
        f"        {ROUTER_FOLDER}: ModelMixin,\n"
        '        strategy: str = "full",\n'
        "        top_k: int = 2,\n"
        "        top_p: float | None = None,  # nucleus; None: hetdiff's default\n"
        "        hetdiff: dict | None = None,  # model_index.json's hetdiff block\n"
        "    ) -> None:\n"
        f"        experts = [{', '.join(names)}]\n"
        "        super().__init__(\n"
        f"            *hetdiff_pipeline.ensemble_from_components(experts, {ROUTER_FOLDER}, "
        "strategy, top_k, top_p)\n"
        "        )\n"
        f"        self.register_modules({', '.join(f'{n}={n}' for n in names)}, "
        f"{ROUTER_FOLDER}={ROUTER_FOLDER})\n"
    )


def model_card(specs: list[ExpertSpec], router: dict[str, Any], metrics: dict | None) -> str:
    """README.md: what the ensemble is, one row per cluster (objective, schedule, class, training
    steps), the router, the metrics of the run when there are any, and how to load it."""
    lines = [
        "---", "library_name: diffusers", "tags: [hetdiff, decentralized-diffusion, ensemble]",
        "---", "", f"# hetdiff ensemble: {len(specs)} experts, K = {router['num_clusters']}", "",
        "Experts trained in isolation on one data cluster each, mixed in one velocity space by a "
        "router (design: hetdiff docs). Each `expert_k/` is a diffusers model folder with its "
        "own scheduler.", "",
        "| cluster | folder | class | objective | prediction | schedule | training steps |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for spec in specs:
        schedule = "-" if spec.schedule is None else spec.schedule.get("name", "-")
        lines.append(
            f"| {spec.cluster_id} | {expert_folder(spec.cluster_id)} | {exported_component(spec)[1]} | "
            f"{spec.objective} | {spec.prediction} | {schedule} | {spec.steps} |"
        )
    lines += ["", f"Router: {router.get('arch', 'film')} network, {router['steps']} steps, "
              f"conditioning {router['conditioning']}, data {router.get('data_spec') or '-'}.",
              f"Data: {specs[0].data_spec or '-'}, {specs[0].resolution} px, "
              f"{specs[0].channels} channel(s)."]  # fmt: skip
    if metrics:
        lines += ["", "## Metrics", "", "```json", json.dumps(metrics, indent=2)[:4000], "```"]
    lines += [
        "", "## Use", "", "```python",
        "from hetdiff.pipeline.diffusers_pipeline import HetdiffEnsemblePipeline",
        "pipe = HetdiffEnsemblePipeline.from_pretrained(PATH, strategy='top1')",
        "images = pipe(num_images=8, steps=30, seed=0).images", "```", "",
        "or, with diffusers' generic loader, `DiffusionPipeline.from_pretrained(PATH, "
        "custom_pipeline=PATH, trust_remote_code=True)` (runs this tree's pipeline.py), or "
        "`hetdiff sample --experts PATH --router PATH/router --out grid.png`; each expert alone: "
        "`PixArtTransformer2DModel.from_pretrained(PATH + '/expert_0')` (or the class that "
        "model_index.json names for it; `HetdiffDiTModel` is in `hetdiff.models.diffusers_dit`).",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"
