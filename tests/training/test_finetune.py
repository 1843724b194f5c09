"""Flow fine-tuning of a converted DDPM expert: its loss is the flow loss of its adapter (the
gradient reaches the DDPM network), and fine-tuning lowers it and reloads with provenance."""

from __future__ import annotations

import json

import torch

from expert_files import probe_batch, write_ddpm_expert
from hetdiff.conditioning import drop_labels
from hetdiff.config import ExpertSettings
from hetdiff.experts.build import is_converted, load_velocity_model, velocity_from_spec
from hetdiff.experts.convert import convert_to_flow
from hetdiff.experts.store import load_expert_model
from hetdiff.objectives.losses import flow_loss
from hetdiff.objectives.velocity import DDPMVelocity
from hetdiff.training.finetune import finetune_expert, flow_finetune_loss


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
