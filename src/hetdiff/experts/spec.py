"""ExpertSpec: everything needed to rebuild and use an expert, stored as JSON beside its weights.

An expert is a network + an objective (flow velocity, or DDPM with a schedule and prediction
type) + the cluster of the data it was trained on. The spec travels inside the checkpoint's
safetensors metadata (see ``experts/store.py``), so a checkpoint describes itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import hetdiff
from hetdiff.errors import HetdiffError
from hetdiff.objectives.kinds import OBJECTIVES, PREDICTIONS, allows_learned_variance, uses_schedule


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Upper bounds a spec may ask for: a spec is read from a file before any network is built, so it
# must not be able to ask for more memory than a real model of this code base would use.
MAX_RESOLUTION = 8192  # image or latent side
MAX_CHANNELS = 256
MAX_CLASSES = 1_000_000
MAX_TIMESTEPS = 100_000  # DDPM num_train_timesteps (the table is built in float64)
MAX_WIDTH = 65_536  # DiT hidden_size, context_dim
MAX_DEPTH = 1024
_DIT_INT_LIMITS = {
    "input_size": MAX_RESOLUTION,
    "in_channels": MAX_CHANNELS,
    "patch_size": MAX_RESOLUTION,
    "hidden_size": MAX_WIDTH,
    "depth": MAX_DEPTH,
    "num_heads": MAX_WIDTH,
    "num_classes": MAX_CLASSES,
    "context_dim": MAX_WIDTH,
}


def _check_int(name: str, value: Any, low: int, high: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not _is_int(value) or not low <= value <= high:
        raise HetdiffError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def check_schedule_dict(schedule: dict[str, Any]) -> None:
    """Types and ranges of a DDPM schedule dict (name, num_train_timesteps <= MAX_TIMESTEPS,
    betas, an alphas_cumprod table of numbers), then the schedule is built to check the rest."""
    if not isinstance(schedule.get("name"), str):
        raise HetdiffError(f"a ddpm expert needs a schedule dict with a 'name', got {schedule!r}")
    _check_int("schedule.num_train_timesteps", schedule.get("num_train_timesteps", 1000), 2,
               MAX_TIMESTEPS)  # fmt: skip
    for name in ("beta_start", "beta_end"):
        value = schedule.get(name)
        if value is not None and not (_is_number(value) and 0 < value < 1):
            raise HetdiffError(f"schedule.{name} must be a number in (0, 1), got {value!r}")
    table = schedule.get("alphas_cumprod")
    if table is not None:
        if not isinstance(table, list | tuple):
            raise HetdiffError(f"schedule.alphas_cumprod must be a list, got {table!r}"[:200])
        bad = next((a for a in table if not _is_number(a)), None)
        if bad is not None:
            raise HetdiffError(f"schedule.alphas_cumprod must hold numbers, found {bad!r}"[:200])
        if not 2 <= len(table) <= MAX_TIMESTEPS:
            raise HetdiffError(
                f"schedule.alphas_cumprod must hold 2 to {MAX_TIMESTEPS} numbers, got {len(table)}"
            )
    from hetdiff.objectives.schedules import make_schedule

    try:
        make_schedule(schedule)
    except (TypeError, ValueError) as err:  # HetdiffError is a ValueError
        raise HetdiffError(f"invalid schedule: {str(err).splitlines()[0]}") from None


def check_model_dict(model: dict[str, Any]) -> None:
    """Types and ranges of a DiT architecture dict (``arch`` "dit"): each size an integer up to
    its bound, ``mlp_ratio`` a number in (0, 64]; other archs only need a string ``arch``."""
    if not isinstance(model.get("arch"), str):
        raise HetdiffError(f"model needs a string 'arch', got {model.get('arch')!r}")
    if model["arch"] != "dit":
        return
    for name, high in _DIT_INT_LIMITS.items():
        if name in model:
            low = 0 if name == "num_classes" else 1
            _check_int(f"model.{name}", model[name], low, high, optional=name == "context_dim")
    ratio = model.get("mlp_ratio", 4.0)
    if not _is_number(ratio) or not 0 < ratio <= 64:
        raise HetdiffError(f"model.mlp_ratio must be a number in (0, 64], got {ratio!r}")


@dataclass(frozen=True, kw_only=True)
class ExpertSpec:
    """The self-description of one expert checkpoint (validated on construction).

    ``model`` is the architecture config dict (e.g. ``DiTConfig.to_dict()`` plus
    ``{"arch": "dit", "name": "tiny"}``); ``schedule`` is the DDPM schedule dict (None for flow),
    checked further by ``hetdiff.objectives.schedules``. Flow networks receive
    ``t * time_scale`` as their timestep.
    """

    objective: str  # "ddpm" | "flow"
    prediction: str  # ddpm: "eps" | "x0" | "v"; flow: "velocity"
    schedule: dict[str, Any] | None  # ddpm only, e.g. {"name": "linear", ...}
    learned_variance: bool = False  # ddpm: the net outputs 2C channels, the extra C are dropped
    model: dict[str, Any]  # architecture config
    cluster_id: int | None = None  # the data cluster this expert was trained on
    num_clusters: int | None = None  # K of the partition
    data_spec: str = ""  # how the data was named, e.g. "fashion-mnist:train"
    data_fingerprint: str = ""  # hash of the training data
    partition_fingerprint: str | None = None  # hash of the cluster assignment
    resolution: int  # image side in pixels
    channels: int  # image channels
    num_classes: int = 0  # 0: unconditional
    class_names: tuple[str, ...] = ()  # empty, or one per class
    steps: int = 0  # optimizer steps trained
    time_scale: float = 1000.0  # flow nets receive t * time_scale as their timestep
    provenance: dict[str, Any] = field(default_factory=dict)  # e.g. converted-from info
    text_encoder: str | None = None  # text experts: "hash", "minilm" or an encoder folder
    autoencoder: dict[str, Any] | None = None  # latent experts: KLAutoencoder.to_dict()
    hetdiff_version: str = hetdiff.__version__

    def __post_init__(self) -> None:
        if not isinstance(self.class_names, tuple | list):
            raise HetdiffError(f"class_names must be a list of strings, got {self.class_names!r}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        self._validate()

    def _validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise HetdiffError(f"unknown objective {self.objective!r}; use one of {OBJECTIVES}")
        allowed = PREDICTIONS[self.objective]
        if self.prediction not in allowed:
            raise HetdiffError(
                f"prediction {self.prediction!r} is not allowed for objective "
                f"{self.objective!r}; use one of {allowed}"
            )
        if uses_schedule(self.objective):
            if not isinstance(self.schedule, dict):
                raise HetdiffError(
                    f"a ddpm expert needs a schedule dict with a 'name', got {self.schedule!r}"
                )
            check_schedule_dict(self.schedule)
        elif self.schedule is not None:
            raise HetdiffError(f"a flow expert takes no schedule, got {self.schedule!r}")
        if not isinstance(self.learned_variance, bool):
            raise HetdiffError(
                f"learned_variance must be true/false, got {self.learned_variance!r}"
            )
        if self.learned_variance and not allows_learned_variance(self.objective):
            raise HetdiffError("learned_variance applies to ddpm experts only; set it to false")
        if not isinstance(self.model, dict):
            raise HetdiffError(f"model must be an architecture config dict, got {self.model!r}")
        check_model_dict(self.model)
        for name in ("resolution", "channels"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise HetdiffError(f"{name} must be a positive integer, got {value!r}")
        _check_int("resolution", self.resolution, 1, MAX_RESOLUTION)
        _check_int("channels", self.channels, 1, MAX_CHANNELS)
        for name in ("num_classes", "steps"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise HetdiffError(f"{name} must be an integer >= 0, got {value!r}")
        _check_int("num_classes", self.num_classes, 0, MAX_CLASSES)
        if self.num_clusters is not None and (
            not _is_int(self.num_clusters) or self.num_clusters < 1
        ):
            raise HetdiffError(
                f"num_clusters must be a positive integer, got {self.num_clusters!r}"
            )
        if self.cluster_id is not None:
            if not _is_int(self.cluster_id) or self.cluster_id < 0:
                raise HetdiffError(f"cluster_id must be an integer >= 0, got {self.cluster_id!r}")
            if self.num_clusters is not None and self.cluster_id >= self.num_clusters:
                raise HetdiffError(
                    f"cluster_id {self.cluster_id} is out of range for num_clusters "
                    f"{self.num_clusters}"
                )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise HetdiffError(
                f"class_names has {len(self.class_names)} names but num_classes is "
                f"{self.num_classes}; give one name per class or none"
            )
        if not all(isinstance(n, str) for n in self.class_names):
            raise HetdiffError(f"class_names must be strings, got {self.class_names!r}")
        if not _is_number(self.time_scale) or self.time_scale <= 0:
            raise HetdiffError(f"time_scale must be a positive number, got {self.time_scale!r}")
        for name in ("data_spec", "data_fingerprint", "hetdiff_version"):
            if not isinstance(getattr(self, name), str):
                raise HetdiffError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.partition_fingerprint is not None and not isinstance(
            self.partition_fingerprint, str
        ):
            raise HetdiffError(
                f"partition_fingerprint must be a string, got {self.partition_fingerprint!r}"
            )
        if not isinstance(self.provenance, dict):
            raise HetdiffError(f"provenance must be a dict, got {self.provenance!r}")
        if self.text_encoder is not None and (
            not isinstance(self.text_encoder, str) or not self.text_encoder
        ):
            raise HetdiffError(
                f"text_encoder must be a non-empty string or null, got {self.text_encoder!r}"
            )
        if self.autoencoder is not None and not isinstance(self.autoencoder, dict):
            raise HetdiffError(f"autoencoder must be a dict or null, got {self.autoencoder!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (class_names as a list)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["class_names"] = list(self.class_names)
        return d

    def to_json(self) -> str:
        """Compact, key-sorted JSON (strict: no NaN/inf)."""
        try:
            return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise HetdiffError(f"expert spec is not JSON-serializable ({err})") from err

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExpertSpec:
        """Build and validate a spec; unknown or missing keys raise HetdiffError naming them."""
        if not isinstance(d, dict):
            raise HetdiffError(f"an expert spec must be a JSON object, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise HetdiffError(f"unknown expert spec keys {unknown}; known keys: {sorted(fields)}")
        required = [
            name
            for name, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in d]
        if missing:
            raise HetdiffError(f"expert spec is missing required keys {missing}")
        values = dict(d)
        if isinstance(values.get("class_names"), list):
            values["class_names"] = tuple(values["class_names"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ExpertSpec:
        """Parse and validate ``to_json`` output."""
        try:
            d = json.loads(text)
        except ValueError as err:
            raise HetdiffError(f"expert spec is not valid JSON ({err})") from err
        return cls.from_dict(d)
