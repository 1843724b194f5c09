"""DDPM -> flow conversion: the converted expert is the adapter-wrapped original and saves and
reloads with its provenance; re-heading makes a zero-velocity flow expert with the same body."""

from __future__ import annotations

import torch

from expert_files import probe_batch, write_ddpm_expert
from hetdiff.experts.build import is_converted, load_velocity_model
from hetdiff.experts.convert import convert_to_flow
from hetdiff.experts.store import load_expert_state, read_spec
from hetdiff.objectives.velocity import DDPMVelocity, FlowVelocity


def test_converted_expert_gives_the_original_velocity_and_keeps_provenance(tmp_path):
    source = write_ddpm_expert(tmp_path / "ddpm.safetensors", prediction="v")
    out = convert_to_flow(source, tmp_path / "converted")
    assert out == tmp_path / "converted" / "expert.safetensors"
    original, _ = load_velocity_model(source)
    converted, spec = load_velocity_model(out)
    assert isinstance(converted, DDPMVelocity) and converted.prediction == "v"
    x, t, labels = probe_batch()
    with torch.no_grad():
        v_orig, v_conv = original(x, t, labels), converted(x, t, labels)
    assert v_orig.abs().max() > 0.1  # a real velocity, not a zero network
    assert torch.allclose(v_conv, v_orig, rtol=0, atol=1e-6)
    # the spec still reads through the DDPM adapter and records where it came from
    reread = read_spec(out)
    assert reread == spec and is_converted(reread)
    assert (reread.objective, reread.prediction, reread.schedule["name"]) == ("ddpm", "v", "cosine")
    prov = reread.provenance
    assert prov["finetune_objective"] == "flow" and prov["rehead"] is False
    assert prov["original"] == {"objective": "ddpm", "prediction": "v",
                                "schedule": read_spec(source).schedule, "learned_variance": True}  # fmt: skip
    assert prov["converted_from"]["path"] == str(source)
    assert prov["converted_from"]["steps"] == 123 and len(prov["converted_from"]["sha256"]) == 64
    assert (reread.cluster_id, reread.num_clusters) == (1, 2)


def test_rehead_makes_a_zero_velocity_flow_expert_with_the_same_body(tmp_path):
    source = write_ddpm_expert(tmp_path / "ddpm.safetensors")
    out = convert_to_flow(source, tmp_path / "rehead", rehead=True)
    velocity, spec = load_velocity_model(out)
    assert isinstance(velocity, FlowVelocity)
    assert (spec.objective, spec.prediction, spec.schedule, spec.learned_variance) == (
        "flow", "velocity", None, False)  # fmt: skip
    assert spec.model["learned_sigma"] is False and spec.provenance["rehead"] is True
    x, t, labels = probe_batch()
    with torch.no_grad():
        assert torch.equal(velocity(x, t, labels), torch.zeros_like(x))
    old, _ = load_expert_state(source)
    new, _ = load_expert_state(out)
    body = [k for k in old if not k.startswith("final_layer.linear")]
    assert all(torch.equal(old[k], new[k]) for k in body)
    assert new["final_layer.linear.weight"].shape == (4, 32)  # P*P*C, not P*P*2C
