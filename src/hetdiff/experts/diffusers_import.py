"""The one spec builder for diffusers folders: model ``config.json`` + ``scheduler_config.json``
-> ``ExpertSpec``, and back (``scheduler_config_for``, used by the export).

What the scheduler config says and where it goes (defaults are diffusers' own):

    _class_name            DDPM-family scheduler -> objective "ddpm";
                           FlowMatch*DiscreteScheduler -> objective "flow", prediction "velocity"
    prediction_type        epsilon -> "eps", sample -> "x0", v_prediction -> "v"
    beta_schedule          linear / scaled_linear (beta_start, beta_end) -> named schedule,
                           squaredcos_cap_v2 -> "cosine", sigmoid -> a table
    trained_betas          a table: abar_s = prod_{i <= s} (1 - beta_i), one beta per train step
    num_train_timesteps    T of the schedule; flow: the network reads t * T (``time_scale``)
    variance_type          learned / learned_range: the net outputs 2C channels (dropped)
    timestep_spacing, steps_offset, set_alpha_to_one, clip_sample, shift
                           sampler conventions, kept in ``provenance["diffusers"]["scheduler"]``
                           (``sampler_conventions``): the network itself does not depend on them

The velocity adapter (``objectives/velocity.py``) then does the rest: a DDPM network is called
at fractional steps of its own table, a flow network at t * T.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import hetdiff
from hetdiff.errors import HetdiffError
from hetdiff.experts.diffusers_model import diffusers_model_dict, model_side, out_channels_of
from hetdiff.experts.diffusers_scheduler import (  # noqa: F401 (scheduler_config_for, sampler_conventions: re-exported)
    DDPM_SCHEDULERS,
    DEFAULT_T,
    FLOW_SCHEDULERS,
    LEARNED_VARIANCE_TYPES,
    NAMED_BETA_SCHEDULES,
    PREDICTION_TYPES,
    sampler_conventions,
    scheduler_config_for,
)
from hetdiff.experts.spec import ExpertSpec
from hetdiff.models.diffusers_dit import HETDIFF_DIT_CLASS, hetdiff_dit_config
from hetdiff.models.diffusers_net import DIFFUSERS_CLASSES, UNET, context_dim_of, num_classes_of
from hetdiff.models.dit import DiTConfig
from hetdiff.objectives.kinds import DDPM, FLOW
from hetdiff.objectives.schedules import make_schedule

MODEL_CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG = "scheduler_config.json"
MODEL_SUBFOLDERS = ("unet", "transformer")  # where a pipeline folder keeps its denoiser
DEFAULT_BETAS = (0.0001, 0.02)  # diffusers' default beta_start, beta_end (every schedule)


@dataclass(frozen=True)
class DiffusersFolder:
    """Where a diffusers model lives: its config, weights and scheduler config (parsed)."""

    root: Path
    model_config_path: Path
    weights_path: Path
    scheduler_path: Path
    model_config: dict[str, Any]
    scheduler_config: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise HetdiffError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise HetdiffError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def locate_diffusers_folder(path: str | Path) -> DiffusersFolder:
    """Find the denoiser and its scheduler config in ``path``: a model folder (``config.json``
    with ``scheduler/scheduler_config.json`` or ``scheduler_config.json`` beside it), or a
    pipeline folder (``model_index.json`` with ``unet/`` or ``transformer/`` and ``scheduler/``)."""
    root = Path(path)
    if not root.is_dir():
        raise HetdiffError(f"{root} is not a folder; give a diffusers model or pipeline folder")
    model_dir = root
    if not (root / MODEL_CONFIG).is_file():
        found = [root / sub for sub in MODEL_SUBFOLDERS if (root / sub / MODEL_CONFIG).is_file()]
        if not found:
            raise HetdiffError(
                f"{root} has no {MODEL_CONFIG} (nor unet/ or transformer/ with one); give a "
                "diffusers model folder written by save_pretrained"
            )
        model_dir = found[0]
    candidates = [
        model_dir / "scheduler" / SCHEDULER_CONFIG,
        model_dir / SCHEDULER_CONFIG,
        root / "scheduler" / SCHEDULER_CONFIG,
    ]
    scheduler = next((c for c in candidates if c.is_file()), None)
    if scheduler is None:
        raise HetdiffError(
            f"{model_dir} has no scheduler config (looked for scheduler/{SCHEDULER_CONFIG} and "
            f"{SCHEDULER_CONFIG}); save the model's scheduler beside it with save_pretrained"
        )
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        pickled = (model_dir / "diffusion_pytorch_model.bin").is_file()
        why = " (only a pickled .bin: hetdiff never unpickles)" if pickled else ""
        raise HetdiffError(
            f"{model_dir} has no {WEIGHTS}{why}; save the model with safe_serialization=True"
        )
    return DiffusersFolder(
        root, model_dir / MODEL_CONFIG, weights, scheduler,
        _read_json(model_dir / MODEL_CONFIG), _read_json(scheduler),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Scheduler config -> objective, prediction, schedule
# --------------------------------------------------------------------------------------------


def _ddpm_schedule(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """The schedule dict (``objectives.schedules.ScheduleSpec``) a DDPM scheduler config names."""
    steps = config.get("num_train_timesteps", DEFAULT_T)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise HetdiffError(f"{where}: num_train_timesteps must be an integer >= 2, got {steps!r}")
    if config.get("rescale_betas_zero_snr"):
        raise HetdiffError(
            f"{where}: rescale_betas_zero_snr is true; a zero-terminal-SNR schedule has no finite "
            "velocity conversion at its last step (hetdiff needs abar in (0, 1))"
        )
    start = float(config.get("beta_start", DEFAULT_BETAS[0]))
    end = float(config.get("beta_end", DEFAULT_BETAS[1]))
    betas = config.get("trained_betas")
    name = config.get("beta_schedule", "linear")
    if betas is not None:
        if not isinstance(betas, list) or len(betas) != steps:
            count = len(betas) if isinstance(betas, list) else type(betas).__name__
            raise HetdiffError(
                f"{where}: trained_betas has {count} entries but num_train_timesteps is {steps}; "
                "give one beta per training step"
            )
        table = torch.tensor([float(b) for b in betas], dtype=torch.float64)
    elif name in NAMED_BETA_SCHEDULES:
        return {"name": name, "num_train_timesteps": steps, "beta_start": start, "beta_end": end}
    elif name == "squaredcos_cap_v2":
        return {"name": "cosine", "num_train_timesteps": steps}
    elif name == "sigmoid":  # GeoDiff: beta = sigmoid(linspace(-6, 6, T)) (end - start) + start
        table = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (end - start)
        table = table + start
    else:
        raise HetdiffError(
            f"{where}: beta_schedule {name!r} is unknown; use linear, scaled_linear, "
            "squaredcos_cap_v2, sigmoid or trained_betas"
        )
    abar = torch.cumprod(1 - table, dim=0)
    return {"name": "table", "num_train_timesteps": steps, "alphas_cumprod": abar.tolist()}


def objective_from_scheduler(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """{objective, prediction, schedule, time_scale, learned_variance} from a scheduler config;
    one-line errors naming ``where`` and the field."""
    name = config.get("_class_name")
    if name in FLOW_SCHEDULERS:
        steps = config.get("num_train_timesteps", DEFAULT_T)
        if isinstance(steps, bool) or not isinstance(steps, int | float) or steps <= 0:
            raise HetdiffError(f"{where}: num_train_timesteps must be positive, got {steps!r}")
        return {"objective": FLOW, "prediction": "velocity", "schedule": None,
                "time_scale": float(steps), "learned_variance": False}  # fmt: skip
    if name not in DDPM_SCHEDULERS:
        raise HetdiffError(
            f"{where}: _class_name {name!r} is not a scheduler hetdiff can read; use a DDPM-family "
            f"scheduler ({', '.join(DDPM_SCHEDULERS[:3])}, ...) or {FLOW_SCHEDULERS[0]}"
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise HetdiffError(
            f"{where}: prediction_type {prediction!r} cannot be converted to a velocity; "
            f"use one of {', '.join(PREDICTION_TYPES)}"
        )
    schedule = _ddpm_schedule(config, where)
    try:
        make_schedule(schedule)
    except HetdiffError as err:
        raise HetdiffError(f"{where}: {err}") from None
    return {"objective": DDPM, "prediction": PREDICTION_TYPES[prediction], "schedule": schedule,
            "time_scale": float(DEFAULT_T),
            "learned_variance": config.get("variance_type") in LEARNED_VARIANCE_TYPES}  # fmt: skip


# --------------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------------


def _check_model_config(folder: DiffusersFolder, learned: bool) -> tuple[str, int, int, bool]:
    """(class name, side, channels, learned variance) of the model config, or a one-line error."""
    config, where = folder.model_config, folder.model_config_path
    name = config.get("_class_name")
    if name == HETDIFF_DIT_CLASS:  # our DiT as exported: its config is a DiTConfig
        config = {**config, "sample_size": config.get("input_size"),
                  "out_channels": (1 + bool(config.get("learned_sigma"))) * config["in_channels"]}  # fmt: skip
    elif name not in DIFFUSERS_CLASSES:
        raise HetdiffError(
            f"{where}: _class_name {name!r} is not supported; use one of "
            f"{', '.join((*DIFFUSERS_CLASSES, HETDIFF_DIT_CLASS))}"
        )
    if name == UNET and config.get("time_embedding_type", "positional") != "positional":
        raise HetdiffError(
            f"{where}: time_embedding_type {config.get('time_embedding_type')!r} is not supported "
            "(it cannot take fractional steps); only 'positional' is"
        )
    side = model_side(config, str(where))
    channels = config.get("in_channels")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise HetdiffError(f"{where}: in_channels must be a positive integer, got {channels!r}")
    out = out_channels_of(config)
    if out not in (channels, 2 * channels):
        raise HetdiffError(
            f"{where}: out_channels {out} must be in_channels {channels} or twice it (learned "
            "variance)"
        )
    if learned and out != 2 * channels:
        raise HetdiffError(
            f"{folder.scheduler_path}: variance_type "
            f"{folder.scheduler_config.get('variance_type')!r} needs out_channels = "
            f"{2 * channels}, but {where} has out_channels {out}"
        )
    return name, side, channels, out == 2 * channels


def spec_from_diffusers(
    folder: DiffusersFolder,
    cluster_id: int | None = None,
    num_clusters: int | None = None,
    partition_fingerprint: str | None = None,
    text_encoder: str | None = None,
    data_spec: str = "",
) -> ExpertSpec:
    """The ExpertSpec of a diffusers folder: the objective from its scheduler config, the network
    ``{"arch": "diffusers", "class", "config"}``, shape and conditioning from the model config;
    the scheduler config itself under ``provenance["diffusers"]``."""
    objective = objective_from_scheduler(folder.scheduler_config, folder.scheduler_path)
    if objective["learned_variance"] and objective["objective"] == FLOW:
        raise HetdiffError(f"{folder.scheduler_path}: a flow scheduler takes no variance_type")
    name, side, channels, learned = _check_model_config(folder, objective["learned_variance"])
    if learned and objective["objective"] == FLOW:
        raise HetdiffError(
            f"{folder.model_config_path}: out_channels is twice in_channels (learned variance) "
            f"but {folder.scheduler_path} is a flow scheduler; a flow expert predicts C channels"
        )
    model = diffusers_model_dict(name, folder.model_config)
    context_dim = context_dim_of(name, folder.model_config)
    num_classes = num_classes_of(name, folder.model_config)
    if name == HETDIFF_DIT_CLASS:
        model = {"arch": "dit", **hetdiff_dit_config(folder.model_config)}
        num_classes, context_dim = model["num_classes"], None
    if context_dim is not None:
        model["context_dim"] = context_dim  # what the ensemble reads as "text-conditioned"
    provenance = {"diffusers": {"source": str(folder.root), "model_class": name,
                                "scheduler": dict(folder.scheduler_config)}}  # fmt: skip
    try:
        return ExpertSpec(
            objective=objective["objective"], prediction=objective["prediction"],
            schedule=objective["schedule"], learned_variance=learned, model=model,
            cluster_id=cluster_id, num_clusters=num_clusters,
            partition_fingerprint=partition_fingerprint, data_spec=data_spec,
            resolution=side, channels=channels,
            num_classes=num_classes,
            time_scale=objective["time_scale"], provenance=provenance,
            text_encoder=text_encoder, hetdiff_version=hetdiff.__version__,
        )  # fmt: skip
    except HetdiffError as err:
        raise HetdiffError(f"{folder.root}: {err}") from None


def check_fits_ensemble(spec: ExpertSpec, folder: DiffusersFolder, others: list[Any]) -> None:
    """One-line error naming the config file and field when the model's side or channels differ
    from the ensemble's experts (``others``: their ExpertSpecs)."""
    if not others:
        return
    first = others[0]
    for field, ours, theirs in (
        ("sample_size", spec.resolution, first.resolution),
        ("in_channels", spec.channels, first.channels),
    ):
        if ours != theirs:
            what = "resolution" if field == "sample_size" else "channels"
            raise HetdiffError(
                f"{folder.model_config_path}: {field} {ours} disagrees with the ensemble's "
                f"{what} {theirs}; import a model of the ensemble's data"
            )


# --------------------------------------------------------------------------------------------
# Import: folder -> hetdiff checkpoint
# --------------------------------------------------------------------------------------------


def read_diffusers_weights(folder: DiffusersFolder) -> dict[str, torch.Tensor]:
    """The model's ``diffusion_pytorch_model.safetensors`` (safetensors only, never pickles)."""
    import safetensors.torch

    try:
        return safetensors.torch.load_file(str(folder.weights_path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise HetdiffError(
            f"{folder.weights_path} is truncated or corrupt ({type(err).__name__})"
        ) from None


def import_diffusers_expert(
    path: str | Path,
    out: str | Path,
    cluster_id: int | None = None,
    num_clusters: int | None = None,
    partition_fingerprint: str | None = None,
    experts: str | Path | None = None,
    text_encoder: str | None = None,
) -> tuple[Path, ExpertSpec]:
    """Write the diffusers model at ``path`` as the hetdiff expert ``out/expert.safetensors``
    (its own weights under its own keys, the spec from its configs); with ``experts`` (a
    registry) the model must fit that ensemble's side and channels. Returns (file, spec)."""
    from hetdiff.experts.diffusers_model import diffusers_net, is_diffusers_spec
    from hetdiff.experts.store import check_shapes, list_experts, save_expert, spec_shapes

    folder = locate_diffusers_folder(path)
    spec = spec_from_diffusers(
        folder, cluster_id, num_clusters, partition_fingerprint, text_encoder,
        data_spec=f"diffusers:{folder.root.name}",
    )  # fmt: skip
    if experts is not None:
        check_fits_ensemble(spec, folder, [s for _, s in list_experts(experts)])
    state = read_diffusers_weights(folder)
    if is_diffusers_spec(spec):  # the weights must fit the config
        diffusers_net(spec, state, folder.weights_path)
    else:  # HetdiffDiTModel: our DiT
        found = {k: list(v.shape) for k, v in state.items()}
        config = DiTConfig.from_dict(hetdiff_dit_config(spec.model))
        check_shapes(folder.weights_path, spec_shapes(config), found)
    target = Path(out) / "expert.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_expert(target, state, spec)
    return target, spec
