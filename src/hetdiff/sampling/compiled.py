"""Opt-in sampling speed (``SampleSettings.compile``, ``hetdiff sample --compile``): the networks a
velocity model evaluates, compiled in place with ``torch.compile`` for inference.

The inference counterpart of ``train-expert --compile`` and through the same function
(``hetdiff.training.speed.compile_network``: ``nn.Module.compile``, mode
max-autotune-no-cudagraphs on CPU, torch's default elsewhere), so every module keeps its class,
parameters and state-dict keys. What is compiled: each expert's network (the ``net`` inside its
velocity adapter: the adapter's time scaling and DDPM conversion stay eager, they are a few
elementwise operations) and an ensemble's router when it is a module. The images equal the eager
ones to float rounding, not bitwise; the first batch pays the compilation (seconds for the test
DiTs on CPU, about 35 s for four DiT-XL/2 experts on an H200, ``docs/measured.md``), which is
why it is off by default.

Row counts: ``top-k``, ``top1``, ``sample`` and ``nucleus`` give each expert a different number
of rows at every step. torch compiles for the first count it sees, recompiles once with the
batch dimension symbolic at the second, and once more for a single row (torch specializes
sizes 0 and 1); every later count reuses those graphs. Experts of one architecture share them
(the parameters are graph inputs), experts of different shapes each get their own, and torch
keeps at most ``torch._dynamo.config.recompile_limit`` (8) per function: past that, a network
shape it has no graph for runs eagerly (correct, not faster; torch warns once).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from hetdiff.sampling.ensemble import Ensemble
from hetdiff.training.speed import compile_network


def sampling_networks(model: nn.Module) -> Iterator[nn.Module]:
    """The networks ``model`` evaluates, in call order: for an ``Ensemble`` its router (when a
    module) and each expert's; for a velocity adapter its ``net``; else ``model`` itself."""
    if isinstance(model, Ensemble):
        if isinstance(model.router, nn.Module):
            yield model.router
        for expert in model.experts:
            yield from sampling_networks(expert)
        return
    net = getattr(model, "net", None)
    yield net if isinstance(net, nn.Module) else model


def is_compiled(module: nn.Module) -> bool:
    """True when ``module.compile()`` was called on it (``nn.Module`` keeps the compiled call
    in ``_compiled_call_impl``)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_for_sampling(model: nn.Module, mode: str | None = None) -> nn.Module:
    """Compile in place every network of ``model`` (``sampling_networks``) not compiled yet, and
    return ``model``; it samples as before, its velocity equal to float rounding.

    ``mode``: a ``torch.compile`` mode, "default" for torch's default, or None for the mode of
    the device each network's parameters are on (``hetdiff.training.speed.compile_mode``).
    Compilation happens at the first call; a second ``compile_for_sampling`` changes nothing.
    """
    for network in sampling_networks(model):
        if not is_compiled(network):
            compile_network(network, mode)
    return model
