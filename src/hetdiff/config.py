"""Frozen dataclass configs for the pipeline (``hetdiff run``); every default lives here.

A config file (TOML or YAML) overrides any subset of fields; unknown keys are refused with the
nearest valid key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from hetdiff.errors import HetdiffError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class ClusterConfig:
    k: int = 4  # number of clusters = number of experts
    fine: int = 64  # fine k-means centroids (first stage)
    features: str = "efficientnet-lite0@64"  # encoder key: efficientnet-lite0@<px> or "pixels"
    balanced: bool = True  # balance coarse cluster sizes
    random: bool = False  # random partition instead of feature clusters (a baseline)


@dataclass(frozen=True)
class ExpertConfig:
    objective: str = "flow"  # "flow" | "ddpm"
    prediction: str = "velocity"  # flow: "velocity"; ddpm: "eps" | "x0" | "v"
    schedule: str | None = None  # ddpm: "linear" | "cosine" | "scaled_linear"
    model: str = "tiny"  # a named DiT config
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    time_sampling: str = "logit_normal"  # flow only


def _default_experts() -> tuple[ExpertConfig, ...]:
    # the default mixes objectives: 2 DDPM experts on different schedules, 2 flow experts
    return (
        ExpertConfig("ddpm", "eps", "linear"),
        ExpertConfig("flow"),
        ExpertConfig("ddpm", "v", "cosine"),
        ExpertConfig("flow"),
    )


@dataclass(frozen=True)
class RouterConfig:
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3


@dataclass(frozen=True)
class SampleConfig:
    n: int = 64  # samples per strategy
    steps: int = 30
    solver: str = "heun"
    strategies: tuple[str, ...] = ("top1", "full", "top-k", "sample")
    top_k: int = 2
    cfg: float = 1.0  # classifier-free guidance scale (1 = conditional velocity)
    # text runs only: one grid per prompt from the first strategy; None = one per class (<= 8)
    prompts: tuple[str, ...] | None = None
    per_prompt: int = 16  # images in each prompt's grid


@dataclass(frozen=True)
class EvalConfig:
    n: int = 128  # samples per FID estimate (InceptionV3 runs ~10 images/s on 2 CPU cores)
    fid: bool = True
    reference_n: int = 500  # real images for the reference statistics (cached per data set)
    per_expert: bool = True  # also FID of each expert alone (against the data and its cluster)


@dataclass(frozen=True)
class RunConfig:
    data: str = "mnist5k+animal-mnist"
    resolution: int = 16
    seed: int = 0
    workers: int = 2  # experts trained in parallel, each in its own process
    class_conditional: bool = True
    # captions instead of class labels for experts and router: "hash" | "minilm" | a folder
    text_encoder: str | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    experts: tuple[ExpertConfig, ...] = field(default_factory=_default_experts)
    router: RouterConfig = field(default_factory=RouterConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _nested_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a dict, recursing into nested configs; refuse unknown keys."""
    if not isinstance(values, dict):
        raise HetdiffError(f"{where or 'config'} must be a table/mapping, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    hints = _nested_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise HetdiffError(f"unknown config key {where + key!r}{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = _build(hint_type, value, f"{where}{key}.")
        elif key == "experts":
            if not isinstance(value, list) or not value:
                raise HetdiffError("config key 'experts' must be a non-empty list of expert tables")
            kwargs[key] = tuple(
                _build(ExpertConfig, v, f"{where}experts[{i}].") for i, v in enumerate(value)
            )
        elif key == "strategies":
            kwargs[key] = tuple(value)
        elif key == "prompts" and value is not None:
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise HetdiffError(
                    f"config key {where + key!r} must be a list of prompt strings, got {value!r}"
                )
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def validate(config: RunConfig) -> RunConfig:
    """Check the numbers and names before any work starts; one-line errors."""
    if config.cluster.k != len(config.experts):
        raise HetdiffError(
            f"cluster.k = {config.cluster.k} but {len(config.experts)} experts are listed; "
            "list one expert per cluster"
        )
    if config.cluster.k < 1:
        raise HetdiffError(f"cluster.k must be >= 1, got {config.cluster.k}")
    if config.resolution < 4:
        raise HetdiffError(f"resolution must be >= 4, got {config.resolution}")
    for i, expert in enumerate(config.experts):
        if expert.steps < 1:
            raise HetdiffError(
                f"experts[{i}].steps must be a positive step count, got {expert.steps}"
            )
        if expert.objective not in ("flow", "ddpm"):
            raise HetdiffError(
                f"experts[{i}].objective {expert.objective!r} is unknown; use 'flow' or 'ddpm'"
            )
        if expert.objective == "ddpm" and expert.prediction not in ("eps", "x0", "v"):
            raise HetdiffError(
                f"experts[{i}].prediction {expert.prediction!r} is not a DDPM prediction; "
                "use eps, x0 or v"
            )
        if expert.objective == "flow" and expert.prediction != "velocity":
            raise HetdiffError(f"experts[{i}] is a flow expert: its prediction is 'velocity'")
    for name, value in [
        ("router.steps", config.router.steps),
        ("sample.steps", config.sample.steps),
        ("sample.n", config.sample.n),
        ("evaluate.n", config.evaluate.n),
        ("workers", config.workers),
        ("sample.per_prompt", config.sample.per_prompt),
    ]:
        if value < 1:
            raise HetdiffError(f"{name} must be >= 1, got {value}")
    if config.text_encoder is not None:
        from hetdiff.models.text import check_text_encoder_name

        check_text_encoder_name(config.text_encoder, what="text_encoder")
    prompts = config.sample.prompts
    if prompts is not None:
        if config.text_encoder is None:
            raise HetdiffError(
                'sample.prompts needs a text-conditioned run; set text_encoder (e.g. "hash") '
                "or drop sample.prompts"
            )
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise HetdiffError(
                f"sample.prompts must be a non-empty list of non-empty strings, got {list(prompts)}"
            )
    return config


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Read a TOML (.toml) or YAML (.yaml/.yml) or JSON file; missing fields take defaults."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise HetdiffError(f"config file {str(p)!r} does not exist")
        text = p.read_text()
        try:
            if p.suffix == ".toml":
                values = tomllib.loads(text)
            elif p.suffix in (".yaml", ".yml"):
                import yaml

                values = yaml.safe_load(text) or {}
            elif p.suffix == ".json":
                values = json.loads(text)
            else:
                raise HetdiffError(f"config {str(p)!r}: use a .toml, .yaml or .json file")
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as err:
            if isinstance(err, HetdiffError):
                raise
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise HetdiffError(f"config {str(p)!r} does not parse: {first}") from err
    values = {**values, **(overrides or {})}
    return validate(_build(RunConfig, values, ""))
