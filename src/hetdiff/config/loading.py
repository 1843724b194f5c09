"""Reading a run config: a TOML/YAML/JSON file, a preset and overrides, validated as a whole."""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

from hetdiff.config.fields import build_settings
from hetdiff.config.settings import PRESETS, RunConfig
from hetdiff.errors import HetdiffError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def validate_run(config: RunConfig) -> RunConfig:
    """Check a whole run before any work starts: K against the experts, the text settings, each
    expert's model name and the resolution against its patch size; one-line errors."""
    from hetdiff.models.dit import DIT_CONFIGS

    if config.cluster.k != len(config.experts):
        raise HetdiffError(
            f"cluster.k = {config.cluster.k} but {len(config.experts)} experts are listed; "
            "list one expert per cluster"
        )
    if config.resources and len(config.resources) != len(config.experts):
        raise HetdiffError(
            f"{len(config.resources)} resources tables for {len(config.experts)} experts; "
            "list one [[resources]] per expert, in order, or none for the defaults"
        )
    for i, expert in enumerate(config.experts):
        if expert.model not in DIT_CONFIGS:
            close = difflib.get_close_matches(expert.model, DIT_CONFIGS, n=1)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(DIT_CONFIGS)}"
            )
            raise HetdiffError(f"experts[{i}].model {expert.model!r} is unknown; {hint}")
        patch = DIT_CONFIGS[expert.model]["patch_size"]
        if config.resolution % patch:
            raise HetdiffError(
                f"resolution {config.resolution} is not divisible by experts[{i}].model "
                f"{expert.model!r}'s patch size {patch}; pick a multiple of {patch}"
            )
    if config.text_encoder is not None:
        from hetdiff.models.text import check_text_encoder_name

        check_text_encoder_name(config.text_encoder, what="text_encoder")
    if config.sample.prompts is not None and config.text_encoder is None:
        raise HetdiffError(
            'sample.prompts needs a text-conditioned run; set text_encoder (e.g. "hash") '
            "or drop sample.prompts"
        )
    return config


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a TOML (.toml), YAML (.yaml/.yml) or JSON (.json) file; one-line errors
    for a missing file, a parse error or a YAML tag that would build Python objects."""
    p = Path(path)
    if not p.is_file():
        raise HetdiffError(f"config file {str(p)!r} does not exist")
    if p.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise HetdiffError(f"config {str(p)!r}: use a .toml, .yaml or .json file")
    try:
        text = p.read_text()
        if p.suffix == ".toml":
            values = tomllib.loads(text)
        elif p.suffix == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text) or {}
    except (OSError, UnicodeDecodeError, ValueError, tomllib.TOMLDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HetdiffError(f"config {str(p)!r} does not parse: {first}") from None
    except Exception as err:  # yaml.YAMLError (e.g. a !!python tag safe_load refuses)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HetdiffError(f"config {str(p)!r} does not parse: {first}") from None
    if not isinstance(values, dict):
        raise HetdiffError(f"config {str(p)!r} must hold a table/mapping at the top level")
    return values


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
) -> RunConfig:
    """Defaults, then the file at ``path``, then ``preset`` (e.g. "quick": its keys replace the
    file's, so a file's data and text_encoder keep), then ``overrides``; each layer replaces
    whole top-level keys. Validated completely (``validate_run``) before anything runs."""
    values: dict[str, Any] = {} if path is None else read_config_file(path)
    if preset is not None:
        if preset not in PRESETS:
            raise HetdiffError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update(overrides or {})
    return validate_run(build_settings(RunConfig, values))
