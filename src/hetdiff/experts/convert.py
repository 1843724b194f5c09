"""DDPM -> flow conversion of an expert checkpoint, and flow fine-tuning from such a checkpoint.

A DDPM expert is already a velocity model behind its schedule-aware adapter (design.md
section 2): v(x_t, t) = eps-hat - x0-hat read from net(x_t / scale(t), s*(t)). Conversion keeps
that network and that adapter, so the converted expert gives exactly the original's velocity,
and trains it further with the flow-matching loss on the velocity:

    loss = |DDPMVelocity(net)(x_t, t, c) - (eps - x0)|^2,  x_t = (1 - t) x0 + t eps,
    t drawn inside the adapter's valid range.

The spec keeps objective "ddpm", its prediction and schedule (so every reader still wraps it in
``DDPMVelocity``) and records the conversion in ``provenance``:

    {"converted_from": {"path", "sha256", "steps"}, "original": {"objective", "prediction",
     "schedule", "learned_variance"}, "finetune_objective": "flow", "rehead": false}

``rehead=True`` instead re-initializes the output layer to zero (as DiT does) with C channels and
makes the expert a native flow expert (objective "flow", prediction "velocity", timestep
t * time_scale, no input scaling): the body is reused, the head starts from scratch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hetdiff.errors import HetdiffError
from hetdiff.experts.build import velocity_from_spec
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import load_expert_state, save_expert, tensors_digest
from hetdiff.objectives.losses import LossFn, ObjectiveConfig, make_loss_fn
from hetdiff.objectives.velocity import DEFAULT_TIME_SCALE

FINETUNE_KEY = "finetune_objective"
EXPERT_FILE = "expert.safetensors"


def is_converted(spec: ExpertSpec) -> bool:
    """True for a DDPM expert converted for flow fine-tuning (it trains with the flow loss)."""
    return spec.objective == "ddpm" and spec.provenance.get(FINETUNE_KEY) == "flow"


def trains_with_flow(spec: ExpertSpec) -> bool:
    """True when ``spec`` is fine-tuned with the flow loss: a flow expert or a converted one."""
    return spec.objective == "flow" or is_converted(spec)


def checkpoint_path(out: str | Path) -> Path:
    """``out`` itself when it names a ``.safetensors`` file, else ``out/expert.safetensors``."""
    out = Path(out)
    return out if out.suffix == ".safetensors" else out / EXPERT_FILE


def _source_record(path: Path, state: dict[str, Tensor], spec: ExpertSpec) -> dict[str, Any]:
    return {"path": str(path), "sha256": tensors_digest(state), "steps": spec.steps}


#################################################################################
#                                  Conversion                                   #
#################################################################################


def converted_spec(spec: ExpertSpec, source: dict[str, Any], rehead: bool) -> ExpertSpec:
    """The spec of ``spec``'s expert after conversion (see the module docstring)."""
    original = {
        "objective": spec.objective,
        "prediction": spec.prediction,
        "schedule": spec.schedule,
        "learned_variance": spec.learned_variance,
    }
    provenance: dict[str, Any] = {
        "converted_from": source,
        "original": spec.provenance.get("original", original),
        FINETUNE_KEY: "flow",
        "rehead": rehead,
    }
    if spec.provenance:
        provenance["source_provenance"] = spec.provenance
    if not rehead:
        return dataclasses.replace(spec, provenance=provenance)
    model = {**spec.model, "learned_sigma": False}
    return dataclasses.replace(
        spec,
        objective="flow",
        prediction="velocity",
        schedule=None,
        learned_variance=False,
        model=model,
        time_scale=DEFAULT_TIME_SCALE,
        provenance=provenance,
    )


def rehead_state(state: dict[str, Tensor], spec: ExpertSpec) -> dict[str, Tensor]:
    """``state`` with a zero output Linear of C (not 2C) channels per pixel (DiT's zero init)."""
    patch, channels = int(spec.model["patch_size"]), int(spec.channels)
    weight = state["final_layer.linear.weight"]
    out = dict(state)
    out["final_layer.linear.weight"] = torch.zeros(
        patch * patch * channels, weight.shape[1], dtype=weight.dtype
    )
    out["final_layer.linear.bias"] = torch.zeros(patch * patch * channels, dtype=weight.dtype)
    return out


def convert_to_flow(source: str | Path, out: str | Path, rehead: bool = False) -> Path:
    """Convert the DDPM expert checkpoint ``source`` for flow fine-tuning; return the new path.

    ``out`` is a folder (``out/expert.safetensors``) or a ``.safetensors`` path. Refuses (one
    line) a checkpoint that is already flow, or already converted unless re-heading it.
    """
    source = Path(source)
    if source.suffix != ".safetensors":
        raise HetdiffError(
            f"{source} is not a hetdiff expert checkpoint (.safetensors); import a "
            "facebookresearch/DiT file with --to expert first"
        )
    state, spec = load_expert_state(source)
    if spec.objective == "flow":
        raise HetdiffError(
            f"{source} is already a flow expert; nothing to convert (fine-tune it with "
            f"`hetdiff train-expert --init {source}`)"
        )
    if is_converted(spec) and not rehead:
        raise HetdiffError(
            f"{source} is already converted for flow fine-tuning; train it with "
            f"`hetdiff train-expert --init {source}` or pass --rehead"
        )
    if rehead and spec.model.get("arch") != "dit":
        raise HetdiffError(f"--rehead needs a DiT expert, got arch {spec.model.get('arch')!r}")
    new_spec = converted_spec(spec, _source_record(source, state, spec), rehead)
    new_state = rehead_state(state, spec) if rehead else state
    target = checkpoint_path(out)
    if target.resolve() == source.resolve():
        raise HetdiffError(f"--out {out} would overwrite the source checkpoint; pick another")
    save_expert(target, new_state, new_spec)
    return target


#################################################################################
#                               Flow fine-tuning                                #
#################################################################################


def flow_finetune_loss(
    spec: ExpertSpec, time_sampling: str = "logit_normal", label_dropout: float = 0.1
) -> LossFn:
    """``loss_fn(net, x0, labels, generator) -> (B,)``: the flow-matching loss on the velocity
    of ``net`` read through the adapter ``spec`` calls for (DDPMVelocity for a converted
    expert, FlowVelocity for a flow one)."""
    if not trains_with_flow(spec):
        raise HetdiffError(
            "a DDPM expert trains with the flow loss only after conversion; run "
            "`hetdiff convert --from CKPT --to flow` first"
        )
    objective = ObjectiveConfig(
        objective="flow",
        prediction="velocity",
        time_sampling=time_sampling,
        label_dropout=label_dropout,
    )
    return make_loss_fn(objective, wrap=lambda net: velocity_from_spec(net, spec))


def check_init_fits(
    spec: ExpertSpec, dataset: Any, init: str | Path, model: str | None = None
) -> None:
    """One-line errors unless the checkpoint ``init`` can be fine-tuned on ``dataset`` (and is
    the architecture of the named config ``model``, when one is requested)."""
    if not trains_with_flow(spec):
        raise HetdiffError(
            f"{init} is a DDPM expert; convert it first: hetdiff convert --from {init} --to flow "
            "--out DIR, then --init DIR/expert.safetensors"
        )
    if spec.text_encoder is not None:
        raise HetdiffError(f"{init} is caption-conditioned; --init supports class experts only")
    if (spec.resolution, spec.channels) != (dataset.resolution, dataset.channels):
        raise HetdiffError(
            f"{init} was trained at {spec.resolution} px, {spec.channels} channel(s) but the data "
            f"is {dataset.resolution} px, {dataset.channels} channel(s); pass --resolution "
            f"{spec.resolution} or other data"
        )
    if spec.num_classes and spec.num_classes != dataset.num_classes:
        raise HetdiffError(
            f"{init} has {spec.num_classes} classes but the data has {dataset.num_classes}; use "
            "the data it was trained on"
        )
    if model is not None:
        from hetdiff.models.dit import DIT_CONFIGS, dit_config

        named = dit_config(model).to_dict()
        fields = [k for k in DIT_CONFIGS[model] if named[k] != spec.model.get(k)]
        if fields:
            have = ", ".join(f"{k} {spec.model.get(k)}" for k in fields)
            want = ", ".join(f"{k} {named[k]}" for k in fields)
            raise HetdiffError(
                f"architecture mismatch: {init} has {have} but --model {model} has {want}; drop "
                "--model or pass the checkpoint's"
            )


def finetune_expert(
    init: str | Path,
    dataset: Any,
    settings: Any,
    out_dir: str | Path,
    cluster_id: int | None = None,
    num_clusters: int | None = None,
    partition_fingerprint: str | None = None,
    resume: bool = False,
    model: str | None = None,
) -> Path:
    """Train the flow (or converted) expert ``init`` further with the flow loss on ``dataset``.

    ``settings`` is an ``ExpertSettings`` (steps, batch, lr, EMA, seed, time sampling, label
    dropout); its architecture fields are ignored: the network is the checkpoint's. Writes
    ``out_dir/expert.safetensors`` at every checkpoint with the init's spec (objective,
    schedule, model unchanged), this run's steps, data and cluster, and provenance
    ``finetuned_from``. Returns the checkpoint path.
    """
    from hetdiff.experts.train import train_config_for
    from hetdiff.models.dit import DiT, DiTConfig
    from hetdiff.training.loop import train

    init = Path(init)
    state, spec = load_expert_state(init)
    check_init_fits(spec, dataset, init, model)
    if settings.objective != "flow":
        raise HetdiffError("--init fine-tunes with the flow loss; drop --objective ddpm")
    if len(dataset) == 0:
        raise HetdiffError("the expert's data shard is empty; pick another cluster or dataset")
    config = DiTConfig.from_dict({k: v for k, v in spec.model.items() if k not in ("arch", "name")})
    net: nn.Module = DiT(config)
    net.load_state_dict(state, strict=True)
    labels = dataset.labels if spec.num_classes else None
    loss_fn = flow_finetune_loss(spec, settings.time_sampling, settings.label_dropout)
    train_config = train_config_for(settings, len(dataset))
    provenance = {**spec.provenance, "finetuned_from": _source_record(init, state, spec)}
    checkpoint = Path(out_dir) / EXPERT_FILE

    def on_checkpoint(ema_state: dict[str, Tensor], step: int) -> None:
        out_spec = dataclasses.replace(
            spec,
            steps=step,
            data_spec=dataset.spec,
            data_fingerprint=dataset.fingerprint,
            cluster_id=cluster_id,
            num_clusters=num_clusters,
            partition_fingerprint=partition_fingerprint,
            provenance=provenance,
        )
        save_expert(checkpoint, ema_state, out_spec)

    train(net, dataset.images, labels, loss_fn, train_config, out_dir, on_checkpoint, resume=resume)
    return checkpoint
