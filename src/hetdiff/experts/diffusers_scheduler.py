"""diffusers scheduler configs from an expert's spec, and the sampler conventions they record.

``scheduler_config_for`` writes an expert's objective as the scheduler config diffusers reads
(the export); ``sampler_conventions`` reads the DDIM conventions an imported DDPM model's
scheduler recorded (``steps_offset``, ``timestep_spacing``, ...; ``sample --native``);
``flow_match_sigmas`` is the sigma grid diffusers' ``FlowMatchEulerDiscreteScheduler`` samples
an imported flow model on (its ``shift``), which our sampler uses for such an expert by default:

    u_i     = linspace(1, s(1 / T), n)          i = 0..n-1    (T = num_train_timesteps)
    sigma_i = s(u_i),  sigma_n = 0,             s(u) = shift u / (1 + (shift - 1) u)

(diffusers shifts its smallest training sigma 1/T once at construction and the grid again in
``set_timesteps``; the network reads sigma_i * T, the Euler step is x += (sigma_{i+1} - sigma_i) v.)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hetdiff.errors import HetdiffError
from hetdiff.experts.spec import ExpertSpec
from hetdiff.objectives.kinds import uses_schedule
from hetdiff.objectives.schedules import make_schedule

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
DDPM_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler",
    "DEISMultistepScheduler", "KDPM2DiscreteScheduler",
)  # fmt: skip
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
NAMED_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear"}
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
DEFAULT_T = 1000  # diffusers' default num_train_timesteps


# --------------------------------------------------------------------------------------------
# Back: spec -> scheduler config, and the sampler conventions a spec records
# --------------------------------------------------------------------------------------------


def scheduler_config_for(spec: ExpertSpec) -> dict[str, Any]:
    """The diffusers scheduler config of an expert: the imported one when it has one, else a
    ``DDPMScheduler`` (named schedule, or ``trained_betas`` from its table) or a
    ``FlowMatchEulerDiscreteScheduler`` (``num_train_timesteps`` = its time scale)."""
    import diffusers

    recorded = spec.provenance.get("diffusers", {}).get("scheduler")
    if isinstance(recorded, dict):
        return dict(recorded)
    version = diffusers.__version__
    if not uses_schedule(spec.objective):  # a flow expert: no discrete schedule to write
        steps = int(spec.time_scale) if float(spec.time_scale).is_integer() else spec.time_scale
        return {"_class_name": FLOW_SCHEDULERS[0], "_diffusers_version": version,
                "num_train_timesteps": steps, "shift": 1.0}  # fmt: skip
    inverse = {v: k for k, v in PREDICTION_TYPES.items()}
    schedule = make_schedule(spec.schedule)
    config = {"_class_name": "DDPMScheduler", "_diffusers_version": version,
              "num_train_timesteps": schedule.num_train_timesteps, "clip_sample": False,
              "prediction_type": inverse[spec.prediction],
              "variance_type": "learned_range" if spec.learned_variance else "fixed_small"}  # fmt: skip
    name = schedule.spec.name
    if name in NAMED_BETA_SCHEDULES:
        config |= {"beta_schedule": name, "beta_start": schedule.spec.beta_start,
                   "beta_end": schedule.spec.beta_end}  # fmt: skip
    elif name == "cosine":
        config["beta_schedule"] = "squaredcos_cap_v2"
    else:
        abar = schedule.alphas_cumprod
        betas = 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        config["trained_betas"] = betas.tolist()
    return config


def sampler_conventions(spec: ExpertSpec) -> dict[str, Any]:
    """diffusers' DDIM conventions of an expert: steps_offset (0), set_alpha_to_one (True),
    clip_sample_range (None = no clipping) and timestep_spacing (None), from its recorded
    scheduler config; diffusers' defaults for our own experts (no clipping)."""
    recorded = spec.provenance.get("diffusers", {}).get("scheduler") or {}
    clip = None
    if recorded.get("clip_sample", True) and "_class_name" in recorded:
        clip = float(recorded.get("clip_sample_range", 1.0))
    offset = recorded.get("steps_offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise HetdiffError(f"scheduler steps_offset must be an integer >= 0, got {offset!r}")
    shift = recorded.get("shift", 1.0)
    if not isinstance(shift, int | float) or not math.isfinite(shift) or shift <= 0:
        raise HetdiffError(f"scheduler shift must be a positive number, got {shift!r}")
    return {
        "steps_offset": offset,
        "set_alpha_to_one": bool(recorded.get("set_alpha_to_one", True)),
        "clip_sample_range": clip,
        "timestep_spacing": recorded.get("timestep_spacing"),
        "shift": float(shift),
    }


# --------------------------------------------------------------------------------------------
# Flow models: diffusers' sigma grid
# --------------------------------------------------------------------------------------------

# FlowMatchEulerDiscreteScheduler options that change its grid beyond ``shift``
_OTHER_GRIDS = ("use_dynamic_shifting", "shift_terminal", "use_karras_sigmas",
                "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas")  # fmt: skip


def flow_match_sigmas(
    steps: int, shift: float = 1.0, num_train_timesteps: float = 1000
) -> torch.Tensor:
    """diffusers' ``FlowMatchEulerDiscreteScheduler(shift, num_train_timesteps)
    .set_timesteps(steps).sigmas`` in float64: ``steps + 1`` decreasing times in (0, 1], the
    last 0 (formula in the module docstring). With shift = 1 it is linspace(1, 1/T, n) then 0."""
    if int(steps) != steps or steps < 1:
        raise HetdiffError(f"steps must be a positive integer, got {steps!r}")
    if not (math.isfinite(shift) and shift > 0):
        raise HetdiffError(f"shift must be a positive number, got {shift!r}")

    def warp(u: torch.Tensor) -> torch.Tensor:
        return shift * u / (1 + (shift - 1) * u)

    lowest = warp(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64))
    sigmas = warp(torch.linspace(1.0, float(lowest), int(steps), dtype=torch.float64))
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


class FlowMatchGrid:
    """``grid(steps) -> flow_match_sigmas(steps, shift, T)``: the sampling grid of an imported
    flow expert (``velocity.sampling_grid``, read by ``sampling.generate`` by default)."""

    def __init__(self, shift: float, num_train_timesteps: float) -> None:
        self.shift, self.num_train_timesteps = float(shift), float(num_train_timesteps)

    def __call__(self, steps: int) -> torch.Tensor:
        return flow_match_sigmas(steps, self.shift, self.num_train_timesteps)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlowMatchGrid) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        return f"FlowMatchGrid(shift={self.shift}, num_train_timesteps={self.num_train_timesteps})"


def flow_sampling_grid(spec: ExpertSpec) -> FlowMatchGrid | None:
    """The diffusers grid of a flow expert imported with a FlowMatch scheduler config (its
    ``shift`` and ``num_train_timesteps``); None for other experts, and for configs whose grid
    is not the plain shifted one (dynamic shifting, Karras / exponential / beta sigmas, ...)."""
    recorded = spec.provenance.get("diffusers", {}).get("scheduler") or {}
    if uses_schedule(spec.objective) or recorded.get("_class_name") not in FLOW_SCHEDULERS:
        return None
    if any(recorded.get(name) for name in _OTHER_GRIDS):
        return None
    return FlowMatchGrid(sampler_conventions(spec)["shift"], spec.time_scale)
