from __future__ import annotations

import dataclasses
import json

import pytest

import hetdiff
from hetdiff.errors import HetdiffError
from hetdiff.experts.spec import ExpertSpec

LINEAR = {"name": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
MODEL = {"arch": "dit", "name": "tiny", "input_size": 8, "in_channels": 1, "hidden_size": 16}


def ddpm_spec(**overrides) -> ExpertSpec:
    values = dict(
        objective="ddpm",
        prediction="eps",
        schedule=LINEAR,
        learned_variance=True,
        model=MODEL,
        cluster_id=2,
        num_clusters=4,
        data_spec="fashion-mnist:train",
        data_fingerprint="abc123",
        partition_fingerprint="def456",
        resolution=8,
        channels=1,
        num_classes=2,
        class_names=("shirt", "boot"),
        steps=1500,
        provenance={"converted_from": "x.safetensors"},
    )
    values.update(overrides)
    return ExpertSpec(**values)


def test_json_round_trip_ddpm_and_flow():
    ddpm = ddpm_spec(schedule={"name": "table", "alphas_cumprod": [0.999, 0.5, 0.1 + 1e-17]})
    flow = ExpertSpec(objective="flow", prediction="velocity", schedule=None, model=MODEL,
                      resolution=8, channels=1)  # fmt: skip
    for spec in (ddpm, flow):
        text = spec.to_json()
        assert "\n" not in text and json.loads(text)["objective"] == spec.objective
        back = ExpertSpec.from_json(text)
        assert back == spec and back.to_json() == text
    assert ExpertSpec.from_json(ddpm.to_json()).class_names == ("shirt", "boot")
    assert flow.hetdiff_version == hetdiff.__version__ and flow.time_scale == 1000.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"objective": "score"}, "unknown objective 'score'"),
        ({"prediction": "velocity"}, "prediction 'velocity' is not allowed for objective 'ddpm'"),
        ({"prediction": "noise"}, "prediction 'noise' is not allowed"),
        ({"schedule": None}, "a ddpm expert needs a schedule"),
        (
            {"objective": "flow", "prediction": "velocity", "learned_variance": False},
            "a flow expert takes no schedule",
        ),  # fmt: skip
        ({"cluster_id": 4}, "cluster_id 4 is out of range for num_clusters 4"),
        ({"cluster_id": True}, "cluster_id must be an integer"),
        ({"class_names": ("a",)}, "class_names has 1 names but num_classes is 2"),
        ({"resolution": 0}, "resolution must be a positive integer, got 0"),
        ({"time_scale": float("nan")}, "time_scale must be a positive number"),
        ({"model": "dit"}, "model must be an architecture config dict"),
    ],
)
def test_invalid_specs_raise_one_line_errors(change, match):
    with pytest.raises(HetdiffError, match=match) as info:
        ddpm_spec(**change)
    assert "\n" not in str(info.value)
    # The same errors come from JSON.
    d = json.loads(ddpm_spec().to_json())
    d.update({k: list(v) if isinstance(v, tuple) else v for k, v in change.items()})
    with pytest.raises(HetdiffError):
        ExpertSpec.from_json(json.dumps(d))


def test_from_json_rejects_unknown_missing_and_malformed():
    d = json.loads(ddpm_spec().to_json())
    with pytest.raises(HetdiffError, match=r"unknown expert spec keys \['sigma_max'\]"):
        ExpertSpec.from_json(json.dumps({**d, "sigma_max": 80}))
    del d["resolution"]
    with pytest.raises(HetdiffError, match=r"missing required keys \['resolution'\]"):
        ExpertSpec.from_json(json.dumps(d))
    with pytest.raises(HetdiffError, match="not valid JSON"):
        ExpertSpec.from_json("{objective:")
    with pytest.raises(HetdiffError, match="must be a JSON object"):
        ExpertSpec.from_json("[1, 2]")


def test_spec_is_frozen_and_replace_revalidates():
    spec = ddpm_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.steps = 3  # type: ignore[misc]
    assert dataclasses.replace(spec, steps=3).steps == 3
    with pytest.raises(HetdiffError, match="steps must be an integer >= 0"):
        dataclasses.replace(spec, steps=-1)
