"""The compiled-CPU forms of the block's linear layers: the same math as F.linear and the tanh
GELU (checked against float64), and a DiT traced with them equal to the eager one."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from hetdiff.models.compiled_cpu import (
    column_sum,
    compiling_for_cpu,
    linear_bias_apart,
    linear_gelu_tanh,
)
from hetdiff.models.dit import DiT, DiTConfig


def gelu_linear_64(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


FORMS = {
    "linear_gelu_tanh": (linear_gelu_tanh, gelu_linear_64),
    "linear_bias_apart": (linear_bias_apart, F.linear),
}


@pytest.mark.parametrize("rows", [(3, 5), (4, 512)], ids=["15 rows", "2048 rows: two-stage"])
@pytest.mark.parametrize("name", FORMS)
def test_values_and_gradients_match_float64_references(name: str, rows: tuple[int, int]) -> None:
    form, reference = FORMS[name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*rows, 24, generator=gen) * 2
    weight = torch.randn(40, 24, generator=gen) / 24**0.5
    bias = torch.randn(40, generator=gen)
    upstream = torch.randn(*rows, 40, generator=gen)
    inputs32 = [t.clone().requires_grad_() for t in (x, weight, bias)]
    inputs64 = [t.double().requires_grad_() for t in (x, weight, bias)]
    out32, out64 = form(*inputs32), reference(*inputs64)
    (out32 * upstream).sum().backward()
    (out64 * upstream.double()).sum().backward()
    assert out32.dtype == torch.float32 and out32.shape == (*rows, 40)
    assert (out32.double() - out64).abs().max() <= 1e-5 * out64.abs().max()
    for name_, t32, t64 in zip(("x", "weight", "bias"), inputs32, inputs64, strict=True):
        error = (t32.grad.double() - t64.grad).abs().max()
        assert error <= 1e-5 * t64.grad.abs().max(), name_


def test_column_sum_regroups_rows_only_where_they_divide() -> None:
    gen = torch.Generator().manual_seed(1)
    for shape in [(2048, 7), (4, 256, 3), (1000, 5), (64, 9)]:
        g = torch.randn(shape, generator=gen)
        expected = g.double().reshape(-1, shape[-1]).sum(0)
        assert column_sum(g).shape == (shape[-1],)
        torch.testing.assert_close(column_sum(g).double(), expected, rtol=1e-5, atol=1e-4)


def test_the_forms_are_taken_only_while_compiling_for_a_cpu() -> None:
    x = torch.randn(2, 3)
    assert not compiling_for_cpu(x)  # eager: the aten path, bitwise every checkpoint's
    seen = []

    def probe(t: Tensor) -> Tensor:
        seen.append(compiling_for_cpu(t))
        return t + 1

    torch.compile(probe, backend="eager", fullgraph=True)(x)
    torch._dynamo.reset()
    assert seen == [True]


def test_a_dit_traced_with_the_forms_equals_the_eager_dit() -> None:
    # 16 images of 64 tokens: 1024 rows, so the bias gradients take the two-stage sum.
    # "aot_eager" traces forward and backward as inductor does, without compiling kernels.
    config = DiTConfig(input_size=16, in_channels=3, patch_size=2, hidden_size=32, depth=2,
                       num_heads=4)  # fmt: skip
    torch.manual_seed(0)
    eager = DiT(config)
    with torch.no_grad():
        for param in eager.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    traced = copy.deepcopy(eager)
    traced.compile(backend="aot_eager", fullgraph=True)
    gen = torch.Generator().manual_seed(2)
    x, t = torch.randn(16, 3, 16, 16, generator=gen), torch.rand(16, generator=gen) * 999
    weights = torch.randn(16, 3, 16, 16, generator=gen)
    results = []
    for model in (eager, traced):
        out = model(x, t)
        (out * weights).sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch._dynamo.reset()
    (out_eager, grads_eager), (out_traced, grads_traced) = results
    assert (out_traced - out_eager).abs().max() <= 1e-5 * out_eager.abs().max()
    for name, grad in grads_eager.items():
        error = (grads_traced[name] - grad).abs().max()
        assert error <= 1e-4 * grad.abs().max().clamp_min(1e-6), name


def test_the_block_takes_the_forms_when_compiled_for_a_cpu() -> None:
    """The speed path is really taken: traced for a CPU, the MLP and the attention output hold
    no F.linear (addmm and its bias copy) but plain matmuls; eager they are F.linear."""
    from hetdiff.models.dit_blocks import Mlp, SelfAttention

    targets: list[list[str]] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs):
        targets.append([getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes])
        return gm.forward

    x = torch.randn(2, 8, 16)
    for module in (Mlp(16, 4.0), SelfAttention(16, 2)):
        eager = module(x)
        traced = torch.compile(module, backend=recording_backend, fullgraph=True)(x)
        torch.testing.assert_close(traced, eager)
    torch._dynamo.reset()
    mlp_calls, attention_calls = targets
    assert "linear" not in mlp_calls and mlp_calls.count("matmul") == 2
    assert attention_calls.count("linear") == 1 and attention_calls.count("matmul") == 1  # qkv
