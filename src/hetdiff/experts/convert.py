"""DDPM -> flow conversion of an expert checkpoint (its spec and weights).

A DDPM expert is already a velocity model behind its schedule-aware adapter (design.md
section 2): v(x_t, t) = eps-hat - x0-hat read from net(x_t / scale(t), s*(t)). Conversion keeps
that network and that adapter, so the converted expert gives exactly the original's velocity,
and ``hetdiff.training.finetune`` trains it further with the flow-matching loss on the velocity:

    loss = |DDPMVelocity(net)(x_t, t, c) - (eps - x0)|^2,  x_t = (1 - t) x0 + t eps,
    t drawn inside the adapter's valid range.

The spec keeps its DDPM objective, prediction and schedule (so every reader still wraps it in
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
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.experts.build import FINETUNE_KEY, is_converted, is_native_flow
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import load_expert_state, save_expert, tensors_digest
from hetdiff.objectives.kinds import FLOW, default_prediction
from hetdiff.objectives.velocity import DEFAULT_TIME_SCALE

EXPERT_FILE = "expert.safetensors"


def checkpoint_path(out: str | Path) -> Path:
    """``out`` itself when it names a ``.safetensors`` file, else ``out/expert.safetensors``."""
    out = Path(out)
    return out if out.suffix == ".safetensors" else out / EXPERT_FILE


def source_record(path: Path, state: dict[str, Tensor], spec: ExpertSpec) -> dict[str, Any]:
    """What provenance records of a source checkpoint: its path, weights' sha256 and steps."""
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
        FINETUNE_KEY: FLOW,
        "rehead": rehead,
    }
    if spec.provenance:
        provenance["source_provenance"] = spec.provenance
    if not rehead:
        return dataclasses.replace(spec, provenance=provenance)
    model = {**spec.model, "learned_sigma": False}
    return dataclasses.replace(
        spec,
        objective=FLOW,
        prediction=default_prediction(FLOW),
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
    if is_native_flow(spec):
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
    new_spec = converted_spec(spec, source_record(source, state, spec), rehead)
    new_state = rehead_state(state, spec) if rehead else state
    target = checkpoint_path(out)
    if target.resolve() == source.resolve():
        raise HetdiffError(f"--out {out} would overwrite the source checkpoint; pick another")
    save_expert(target, new_state, new_spec)
    return target
