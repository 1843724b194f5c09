"""The DiT's speed paths: contiguous patch tokens and q/k/v taken per slice (bitwise the previous
outputs and gradients) and ``compile_blocks`` (state-dict keys kept, eager outputs to float
rounding)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from hetdiff.conditioning import Conditioning
from hetdiff.errors import HetdiffError
from hetdiff.models.dit import DiT, DiTConfig, compile_blocks
from hetdiff.models.dit_blocks import SelfAttention, gelu_tanh, gelu_tanh_as_sigmoid
from hetdiff.models.embeddings import PatchEmbed

BASE = dict(input_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2, num_heads=4)
CONFIGS = {
    "adaln-single, classes": DiTConfig(**BASE, num_classes=5),
    "adaln-zero, learned sigma": DiTConfig(**BASE, modulation="adaln-zero", learned_sigma=True),
    "text, pooled": DiTConfig(**BASE, context_dim=6, pooled_context=True),
}


class PreviousPatchEmbed(PatchEmbed):
    """The patch embedding as it was before issue 19: tokens + pos_embed, whose sum kept the
    conv output's D-major strides (every LayerNorm and Linear then copied it)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos_embed


class PreviousSelfAttention(SelfAttention):
    """Self-attention as it was before: q, k, v by a permute of the whole qkv output, whose
    backward stacked their gradients and copied the stack again."""

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


def randomized(config: DiTConfig, seed: int = 0) -> DiT:
    """A DiT whose every parameter is random (zero-initialized heads would hide differences)."""
    torch.manual_seed(seed)
    model = DiT(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


def batch(config: DiTConfig, rows: int = 4) -> tuple[Tensor, Tensor, Conditioning | None]:
    gen = torch.Generator().manual_seed(1)
    side = config.input_size
    x = torch.randn(rows, config.in_channels, side, side, generator=gen)
    t = torch.rand(rows, generator=gen) * 999
    cond = None
    if config.num_classes:
        cond = Conditioning(class_labels=torch.tensor([0, 4, -1, 2][:rows]))
    if config.context_dim:
        context = torch.randn(rows, 3, config.context_dim, generator=gen)
        mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
        cond = Conditioning(context=context, context_mask=mask[:rows])
    return x, t, cond


def output_and_grads(model: DiT, config: DiTConfig) -> tuple[Tensor, dict[str, Tensor]]:
    x, t, cond = batch(config)
    model.zero_grad(set_to_none=True)
    out = model(x, t, cond)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), {name: p.grad for name, p in model.named_parameters()}


def test_patch_tokens_are_contiguous_and_equal_the_previous_tokens() -> None:
    torch.manual_seed(0)
    embed = PatchEmbed(input_size=8, patch_size=2, in_channels=3, hidden_size=32)
    previous = copy.deepcopy(embed)
    previous.__class__ = PreviousPatchEmbed
    x = torch.randn(5, 3, 8, 8)
    tokens, reference = embed(x), previous(x)
    assert tokens.shape == (5, 16, 32)
    assert tokens.is_contiguous()
    assert not reference.is_contiguous()  # what every block used to copy
    assert torch.equal(tokens, reference)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_defaults_give_bitwise_the_previous_outputs_and_gradients(config: DiTConfig) -> None:
    model = randomized(config)
    previous = copy.deepcopy(model)
    previous.x_embedder.__class__ = PreviousPatchEmbed
    for block in previous.blocks:
        block.attn.__class__ = PreviousSelfAttention
    out, grads = output_and_grads(model, config)
    out_prev, grads_prev = output_and_grads(previous, config)
    assert out.abs().max() > 0.1  # a real output, not zeros
    assert torch.equal(out, out_prev)
    assert grads.keys() == grads_prev.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, grads_prev[name]), name


def test_the_sigmoid_form_of_the_tanh_gelu_is_the_same_function() -> None:
    """0.5 h (1 + tanh u) = h sigmoid(2u): equal in float64 to rounding, and in float32 both
    forms as close to the float64 value as each other (values and gradients)."""
    h64 = torch.linspace(-16, 16, 20001, dtype=torch.float64, requires_grad=True)
    exact = torch.nn.functional.gelu(h64, approximate="tanh")
    (exact_grad,) = torch.autograd.grad(exact.sum(), h64)
    sigmoid_form = gelu_tanh_as_sigmoid(h64)
    (sigmoid_grad,) = torch.autograd.grad(sigmoid_form.sum(), h64)
    assert (sigmoid_form - exact).abs().max() < 1e-13
    assert (sigmoid_grad - exact_grad).abs().max() < 1e-13
    h32 = h64.detach().float().requires_grad_()
    for form in (gelu_tanh, gelu_tanh_as_sigmoid):  # eager gelu_tanh is aten's kernel
        value = form(h32)
        (grad,) = torch.autograd.grad(value.sum(), h32)
        assert (value.double() - exact).abs().max() < 2e-6 * 16, form.__name__
        assert (grad.double() - exact_grad).abs().max() < 5e-6, form.__name__  # gradient <= 1.13
    assert torch.equal(gelu_tanh(h32), torch.nn.functional.gelu(h32, approximate="tanh"))


def test_a_class_conditional_dit_compiles_to_one_graph_and_still_refuses_bad_labels() -> None:
    # the eager label-range check branched on data: 5 graphs under torch.compile; now asserted
    # inside the graph. The "eager" backend runs the traced graph without inductor (fast).
    config = DiTConfig(input_size=8, in_channels=3, hidden_size=32, depth=2, num_heads=2,
                       num_classes=10)  # fmt: skip
    model = randomized(config)
    x, t = torch.randn(4, 3, 8, 8), torch.rand(4) * 1000
    labels = torch.tensor([0, 9, -1, 3])
    explained = torch._dynamo.explain(model)(x, t, labels)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, t, labels), model(x, t, labels))  # GELU form differs
    for bad in (torch.tensor([0, 10, 1, 2]), torch.tensor([0, -2, 1, 2])):
        with pytest.raises(RuntimeError, match=r"class labels must be in \[0, 10\) or -1"):
            compiled(x, t, bad)
        with pytest.raises(HetdiffError, match=r"class labels must be in \[0, 10\)"):
            model(x, t, bad)  # eager: the one-line error with the labels' range
    torch._dynamo.reset()


@pytest.mark.slow  # torch.compile of two small blocks: about half a minute on 2 CPU cores
def test_compile_blocks_keeps_the_state_dict_and_matches_eager_to_float_rounding() -> None:
    config = CONFIGS["text, pooled"]
    eager = randomized(config)
    compiled = compile_blocks(copy.deepcopy(eager))
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no "_orig_mod." prefix
    fresh = DiT(config)
    fresh.load_state_dict(compiled.state_dict())  # a checkpoint of it loads into a plain DiT
    out, grads = output_and_grads(compiled, config)
    out_eager, grads_eager = output_and_grads(eager, config)
    scale = out_eager.abs().max()
    assert (out - out_eager).abs().max() <= 1e-5 * scale
    for name, grad in grads.items():
        ref = grads_eager[name]
        assert (grad - ref).abs().max() <= 1e-4 * ref.abs().max().clamp_min(1e-6), name
    with torch.no_grad():  # the inference path (sampling) compiles its own graph
        x, t, cond = batch(config)
        assert (compiled(x, t, cond) - eager(x, t, cond)).abs().max() <= 1e-5 * scale
