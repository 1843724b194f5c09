"""DDPM -> flow conversion: the converted expert is the adapter-wrapped original, it saves and
reloads with its provenance, flow fine-tuning through the adapter lowers the flow loss, and bad
inputs are one-line errors."""

from __future__ import annotations

import json

import torch

from hetdiff.cli import main
from hetdiff.experts.build import load_velocity_model, velocity_from_spec
from hetdiff.experts.convert import (
    convert_to_flow,
    finetune_expert,
    flow_finetune_loss,
    is_converted,
)
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import load_expert_model, load_expert_state, read_spec, save_expert
from hetdiff.experts.train import ExpertSettings
from hetdiff.models.conditioning import drop_labels
from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.objectives.losses import flow_loss
from hetdiff.objectives.velocity import DDPMVelocity, FlowVelocity

CONFIG = DiTConfig(input_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=2,
                   num_heads=2, num_classes=10, learned_sigma=True)  # fmt: skip


def write_ddpm_expert(path, objective="ddpm", prediction="eps", seed=0, config=CONFIG):
    """A small random DiT expert of the digits data (8 px, 10 classes), non-zero output."""
    torch.manual_seed(seed)
    net = DiT(config)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    ddpm = objective == "ddpm"
    spec = ExpertSpec(
        objective=objective,
        prediction=prediction,
        schedule={"name": "cosine"} if ddpm else None,
        learned_variance=config.learned_sigma,
        model={"arch": "dit", "name": "test", **config.to_dict()},
        cluster_id=1,
        num_clusters=2,
        data_spec="digits",
        resolution=8,
        channels=1,
        num_classes=10,
        steps=123,
    )
    save_expert(path, net.state_dict(), spec)
    return path


def probe_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 8, 8, generator=gen)
    t = torch.linspace(0.05, 0.9, 8)
    labels = torch.tensor([0, 1, 2, 3, -1, 5, 6, 9])
    return x, t, labels


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


def test_flow_loss_of_a_converted_expert_is_the_loss_of_its_adapter(tmp_path):
    source = write_ddpm_expert(tmp_path / "ddpm.safetensors")
    out = convert_to_flow(source, tmp_path / "c.safetensors")
    net, spec = load_expert_model(out)
    x0, _, labels = probe_batch(1)
    loss_fn = flow_finetune_loss(spec, "uniform", label_dropout=0.0)
    got = loss_fn(net, x0, labels, torch.Generator().manual_seed(7))
    original_net, original_spec = load_expert_model(source)
    velocity = velocity_from_spec(original_net, original_spec)
    gen = torch.Generator().manual_seed(7)
    kept = drop_labels(labels, 0.0, gen)  # the loss draws its label dropout first
    assert torch.equal(kept, labels)
    expected = flow_loss(velocity, x0, gen, kept, "uniform")
    assert got.shape == (8,) and torch.equal(got, expected)
    got.mean().backward()  # the gradient reaches the DDPM network through the adapter
    assert net.final_layer.linear.weight.grad.abs().sum() > 0


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


def test_finetuning_a_converted_expert_lowers_the_flow_loss_and_reloads(tmp_path):
    from hetdiff.data.datasets import load_dataset

    source = write_ddpm_expert(tmp_path / "ddpm.safetensors")
    converted = convert_to_flow(source, tmp_path / "converted")
    dataset = load_dataset("digits", resolution=8)
    settings = ExpertSettings(steps=60, batch_size=32, lr=2e-3, warmup_steps=5,
                              checkpoint_every=60, progress=False, mixed_precision="no")  # fmt: skip
    out = finetune_expert(converted, dataset, settings, tmp_path / "ft", cluster_id=0,
                          num_clusters=2, partition_fingerprint="p")  # fmt: skip
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 60 and log[-1]["loss"] < 0.8 * log[0]["loss"], log
    velocity, spec = load_velocity_model(out)
    assert isinstance(velocity, DDPMVelocity) and is_converted(spec)
    assert spec.steps == 60 and spec.cluster_id == 0 and spec.partition_fingerprint == "p"
    assert spec.provenance["finetuned_from"]["path"] == str(converted)
    assert spec.provenance["converted_from"]["path"] == str(source)
    assert spec.data_fingerprint == dataset.fingerprint


def one_line_cli_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hetdiff: error:") and "\n" not in err and match in err, err
    return err


def test_bad_conversions_are_one_line_errors(tmp_path, capsys):
    flow = write_ddpm_expert(tmp_path / "flow.safetensors", "flow", "velocity",
                             config=DiTConfig(**{**CONFIG.to_dict(), "learned_sigma": False}))  # fmt: skip
    out = str(tmp_path / "out")
    one_line_cli_error(capsys, ["convert", "--from", str(flow), "--to", "flow", "--out", out],
                       "is already a flow expert")  # fmt: skip
    ddpm = write_ddpm_expert(tmp_path / "ddpm.safetensors")
    assert main(["convert", "--from", str(ddpm), "--to", "flow", "--out", out]) == 0
    converted = str(tmp_path / "out" / "expert.safetensors")
    one_line_cli_error(capsys, ["convert", "--from", converted, "--to", "flow", "--out",
                                str(tmp_path / "again")], "already converted")  # fmt: skip
    torch.save({"w": torch.zeros(1)}, tmp_path / "dit.pt")
    one_line_cli_error(capsys, ["convert", "--from", str(tmp_path / "dit.pt"), "--to", "flow",
                                "--out", out], "--to expert first")  # fmt: skip
    one_line_cli_error(capsys, ["convert", "--from", str(tmp_path / "dit.pt"), "--to", "expert",
                                "--out", out], "not a facebookresearch/DiT state dict")  # fmt: skip


def test_train_expert_init_refusals_are_one_line_errors(tmp_path, capsys):
    ddpm = write_ddpm_expert(tmp_path / "ddpm.safetensors")
    base = ["train-expert", "--data", "digits", "--resolution", "8", "--steps", "2",
            "--no-progress", "--out", str(tmp_path / "ft")]  # fmt: skip
    one_line_cli_error(capsys, [*base, "--init", str(ddpm)], "convert it first")
    converted = str(convert_to_flow(ddpm, tmp_path / "c"))
    one_line_cli_error(capsys, [*base, "--init", converted, "--model", "small"],
                       "architecture mismatch")  # fmt: skip
    wrong = ["train-expert", "--data", "digits", "--resolution", "16", "--steps", "2",
             "--no-progress", "--out", str(tmp_path / "ft2"), "--init", converted]  # fmt: skip
    one_line_cli_error(capsys, wrong, "was trained at 8 px")
    one_line_cli_error(capsys, [*base, "--init", converted, "--objective", "ddpm"],
                       "drop --objective ddpm")  # fmt: skip


def test_train_expert_init_runs_from_the_cli(tmp_path, capsys):
    ddpm = write_ddpm_expert(tmp_path / "ddpm.safetensors")
    converted = str(convert_to_flow(ddpm, tmp_path / "c"))
    argv = ["train-expert", "--data", "digits", "--resolution", "8", "--steps", "3",
            "--batch-size", "16", "--no-progress", "--mixed-precision", "no",
            "--out", str(tmp_path / "ft"), "--init", converted]  # fmt: skip
    assert main(argv) == 0
    spec = read_spec(tmp_path / "ft" / "expert.safetensors")
    assert is_converted(spec) and spec.steps == 3
    one_line_cli_error(capsys, argv, "already holds training state")  # no silent restart
