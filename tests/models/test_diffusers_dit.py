"""HetdiffDiTModel: our DiT behind diffusers' ModelMixin/ConfigMixin. Saved by diffusers'
save_pretrained and loaded by its from_pretrained (meta-device loading included), it computes
exactly our DiT's output for class labels (the null class -1 too), text tokens with a mask, and
pooled captions; its state dict is our checkpoint's."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hetdiff.conditioning import Conditioning
from hetdiff.models.diffusers_dit import HetdiffDiTModel, hetdiff_dit_config
from hetdiff.models.dit import DiT, DiTConfig

CONFIGS = {
    "class": DiTConfig(input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10),
    "text": DiTConfig(
        input_size=8,
        hidden_size=32,
        depth=2,
        num_heads=2,
        context_dim=12,
        pooled_context=True,
        learned_sigma=True,
    ),  # fmt: skip
    "adaln-zero": DiTConfig(
        input_size=8,
        hidden_size=32,
        depth=1,
        num_heads=2,
        num_classes=3,
        modulation="adaln-zero",
        mlp_ratio=2.0,
    ),  # fmt: skip
}


def test_the_arguments_are_the_dit_config_fields():
    fields = {f.name: f.default for f in dataclasses.fields(DiTConfig)}
    model = HetdiffDiTModel()
    assert {k: v for k, v in model.config.items() if not k.startswith("_")} == fields
    assert hetdiff_dit_config({"arch": "dit", "name": "tiny", **CONFIGS["class"].to_dict()}) == (
        CONFIGS["class"].to_dict()
    )


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_from_pretrained_computes_our_dit(kind, tmp_path):
    torch.manual_seed(0)
    ours = DiT(CONFIGS[kind])
    with torch.no_grad():
        for param in ours.parameters():
            param.normal_(0, 0.05)
    model = HetdiffDiTModel.from_dit_config(CONFIGS[kind])
    model.load_state_dict(ours.state_dict(), strict=True)
    assert sorted(model.state_dict()) == sorted(ours.state_dict())
    model.save_pretrained(tmp_path)
    loaded = HetdiffDiTModel.from_pretrained(str(tmp_path)).eval()
    assert loaded.dit.config == CONFIGS[kind]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=gen)
    timestep = torch.tensor([3.0, 411.5, 998.0])
    kwargs, cond = {}, None
    if kind == "text":
        context = torch.randn(3, 5, 12, generator=gen)
        mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
        kwargs = {"encoder_hidden_states": context, "encoder_attention_mask": mask.float()}
        cond = Conditioning(context=context, context_mask=mask)
    else:
        labels = torch.tensor([2, -1, 0])
        kwargs, cond = {"class_labels": labels}, labels
    with torch.no_grad():
        expected = ours(x, timestep, cond)
        actual = loaded(x, timestep, **kwargs).sample
        (tuple_out,) = loaded(x, timestep, **kwargs, return_dict=False)
    err = float((actual - expected).abs().max())
    print(f"{kind}: HetdiffDiTModel.from_pretrained vs our DiT: max |diff| {err:.1e}")
    assert expected.abs().max() > 1e-2 and err < 1e-6
    assert torch.equal(tuple_out, actual) and actual.shape[1] == CONFIGS[kind].out_channels
    loaded.train()
    assert loaded.dit.training and loaded.eval().dit.training is False
