"""From a checkpoint's spec to a velocity model: the one place an expert's objective is read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from hetdiff.objectives.schedules import make_schedule
from hetdiff.objectives.velocity import VelocityModel, make_velocity_model

if TYPE_CHECKING:
    from hetdiff.experts.spec import ExpertSpec


def velocity_from_spec(net: nn.Module, spec: ExpertSpec) -> VelocityModel:
    """Wrap ``net`` in the velocity adapter its spec calls for (flow, or DDPM on its schedule)."""
    schedule = make_schedule(spec.schedule) if spec.objective == "ddpm" else None
    return make_velocity_model(
        net,
        spec.objective,
        spec.prediction,
        schedule,
        learned_variance=spec.learned_variance,
        time_scale=spec.time_scale,
    )


def load_velocity_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[VelocityModel, ExpertSpec]:
    """Load an expert checkpoint and return (velocity model in eval mode, spec)."""
    from hetdiff.experts.store import load_expert_model

    net, spec = load_expert_model(path, device=device)
    net.eval()
    return velocity_from_spec(net, spec).to(device), spec
