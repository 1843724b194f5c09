"""The one builder: an expert's objective is read here (and in its spec), nowhere else above.

Spec -> velocity model (``velocity_from_spec``, ``load_velocity_model``); training settings ->
the spec a checkpoint records (``build_expert_spec``); the questions other code asks about a spec's
objective (``is_converted``, ``trains_with_flow``, ``native_ddim``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import hetdiff
from hetdiff.errors import HetdiffError
from hetdiff.experts.diffusers_scheduler import flow_sampling_grid
from hetdiff.experts.spec import ExpertSpec
from hetdiff.objectives.kinds import DDPM, FLOW
from hetdiff.objectives.schedules import DiscreteSchedule, ScheduleSpec, make_schedule
from hetdiff.objectives.velocity import DEFAULT_TIME_SCALE, VelocityModel, make_velocity_model

if TYPE_CHECKING:
    from hetdiff.config import ExpertSettings

FINETUNE_KEY = "finetune_objective"  # provenance key of a DDPM expert converted for flow


def velocity_from_spec(net: nn.Module, spec: ExpertSpec) -> VelocityModel:
    """Wrap ``net`` in the velocity adapter its spec calls for (flow, or DDPM on its schedule).

    A flow model imported with a diffusers FlowMatch scheduler config also gets
    ``sampling_grid`` (its scheduler's shifted sigma grid, ``experts.diffusers_scheduler``),
    which sampling uses unless a shift is given."""
    schedule = make_schedule(spec.schedule) if spec.objective == DDPM else None
    velocity = make_velocity_model(
        net,
        spec.objective,
        spec.prediction,
        schedule,
        learned_variance=spec.learned_variance,
        time_scale=spec.time_scale,
    )
    grid = flow_sampling_grid(spec)
    if grid is not None:
        velocity.sampling_grid = grid
    return velocity


def load_velocity_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[VelocityModel, ExpertSpec]:
    """Load an expert checkpoint and return (velocity model in eval mode, spec)."""
    from hetdiff.experts.store import load_expert_model

    net, spec = load_expert_model(path, device=device)
    net.eval()
    return velocity_from_spec(net, spec).to(device), spec


def build_expert_spec(
    settings: ExpertSettings,
    dataset: Any,
    model_dict: dict[str, Any],
    steps: int,
    cluster_id: int | None = None,
    num_clusters: int | None = None,
    partition_fingerprint: str | None = None,
    provenance: dict[str, Any] | None = None,
    autoencoder: dict[str, Any] | None = None,
) -> ExpertSpec:
    """The spec of an expert trained with ``settings`` on ``dataset`` (an ``ImageDataset``) for
    ``steps`` steps: its objective, prediction and full schedule table dict (ddpm), the network
    ``model_dict``, the data's identity and shape, and its classes when it is class-conditional
    (not with a text encoder)."""
    schedule = None
    if settings.objective == DDPM:
        schedule = make_schedule(ScheduleSpec(name=settings.schedule)).spec.to_dict()
    conditional = settings.class_conditional and settings.text_encoder is None
    return ExpertSpec(
        objective=settings.objective,
        prediction=settings.prediction,
        schedule=schedule,
        learned_variance=settings.learned_variance,
        model=model_dict,
        cluster_id=cluster_id,
        num_clusters=num_clusters,
        data_spec=dataset.spec,
        data_fingerprint=dataset.fingerprint,
        partition_fingerprint=partition_fingerprint,
        resolution=dataset.resolution,
        channels=dataset.channels,
        num_classes=dataset.num_classes if conditional else 0,
        class_names=tuple(dataset.class_names) if conditional else (),
        steps=steps,
        time_scale=DEFAULT_TIME_SCALE,
        provenance=provenance or {},
        hetdiff_version=hetdiff.__version__,
        text_encoder=settings.text_encoder,
        autoencoder=autoencoder,
    )


def is_converted(spec: ExpertSpec) -> bool:
    """True for a DDPM expert converted for flow fine-tuning (it trains with the flow loss)."""
    return spec.objective == DDPM and spec.provenance.get(FINETUNE_KEY) == FLOW


def trains_with_flow(spec: ExpertSpec) -> bool:
    """True when ``spec`` is fine-tuned with the flow loss: a flow expert or a converted one."""
    return spec.objective == FLOW or is_converted(spec)


def is_native_flow(spec: ExpertSpec) -> bool:
    """True for an expert trained as flow from the start (its network predicts the velocity)."""
    return spec.objective == FLOW


def native_ddim(spec: ExpertSpec) -> tuple[DiscreteSchedule, str, bool]:
    """(schedule, prediction, learned_variance) of a DDPM expert, for its own DDIM sampler
    (``sampling.solvers.sample_ddim``); a one-line error for a flow expert."""
    if spec.objective != DDPM:
        raise HetdiffError(
            f"native DDIM sampling needs a DDPM expert; this one is {spec.objective} "
            "(sample it without --native)"
        )
    return make_schedule(spec.schedule), spec.prediction, spec.learned_variance
