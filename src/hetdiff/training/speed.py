"""Opt-in training speed (``TrainConfig.compile``): ``torch.compile`` of the network in place and
the fused AdamW kernel. The trainer and ``benchmarks/dit_train_step.py`` ("ours fast") both call
these functions, so the benchmark measures the path a user turns on.

Compilation is in place (``nn.Module.compile``): the module keeps its class, parameters and
state-dict keys (``torch.compile(model)`` would wrap it and prefix every key with
``_orig_mod.``), so the EMA copy, the saved training state and the expert checkpoint hold the
same keys as an eager run's and load into a plain network. The compiled step equals the eager
step to float rounding (inductor fuses elementwise kernels and picks other GEMM kernels), not
bitwise; the first steps pay the compilation (about 20-60 s on CPU for the small DiTs).

A speed setting, not a model setting: a run may resume with it toggled (the saved optimizer state
is loaded into whichever AdamW implementation this run uses: ``load_optimizer_state``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

# torch.compile mode per device type; other devices (CUDA: CUDA graphs would pin the inputs'
# memory across steps) get torch's default mode. On CPU, max-autotune lets inductor benchmark
# its C++ GEMM templates against aten's kernels (measured faster on the DiT step, issue 19).
COMPILE_MODES = {"cpu": "max-autotune-no-cudagraphs"}
# Device types whose floating-point parameters the fused AdamW kernel serves (torch 2.13).
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def compile_mode(device: torch.device | str) -> str | None:
    """The ``torch.compile`` mode for a network on ``device`` (None: torch's default mode)."""
    return COMPILE_MODES.get(torch.device(device).type)


def compile_network(model: nn.Module, mode: str | None = None) -> nn.Module:
    """Compile ``model`` in place (``nn.Module.compile``) and return it.

    ``mode``: a ``torch.compile`` mode, "default" for torch's default, or None for
    ``compile_mode`` of the device the parameters are on. The state dict keeps its keys; outputs
    and gradients equal the eager ones to float rounding. Compilation happens at the first call.
    """
    if mode is None:
        first = next(model.parameters(), None)
        mode = compile_mode(first.device if first is not None else "cpu")
    model.compile(**({} if mode in (None, "default") else {"mode": mode}))
    return model


def fused_adamw_supported(params: Iterable[torch.Tensor], device: torch.device | str) -> bool:
    """True when the fused AdamW kernel serves every parameter: floating point, and ``device``
    (where they train) a type in ``FUSED_ADAMW_DEVICES``."""
    if torch.device(device).type not in FUSED_ADAMW_DEVICES:
        return False
    return all(p.is_floating_point() for p in params)


def make_adamw(
    params: Iterable[torch.Tensor],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    fused: bool = False,
    device: torch.device | str = "cpu",
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params``; ``fused=True`` picks the fused kernel where
    ``fused_adamw_supported`` (equal updates to float rounding), else torch's default (for-each)
    implementation, which is also what ``fused=False`` gives."""
    params = list(params)
    use_fused = fused and fused_adamw_supported(params, device)
    return torch.optim.AdamW(
        params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True if use_fused else None
    )


# The param-group entries that choose AdamW's implementation, not its math.
_IMPLEMENTATION_KEYS = ("fused", "foreach")


def load_optimizer_state(optimizer: Any, state: Mapping[str, Any]) -> None:
    """Load a saved optimizer ``state`` (``state_dict()``, tensors on CPU) but keep this
    optimizer's implementation: ``torch.optim.Optimizer.load_state_dict`` copies every saved
    param-group entry, so a state saved by a fused AdamW would otherwise stay fused after a
    resume without ``compile`` (and the other way round). Learning rates, moments and steps load
    as saved."""
    groups = []
    for saved, current in zip(state["param_groups"], optimizer.param_groups, strict=True):
        implementation = {k: current[k] for k in _IMPLEMENTATION_KEYS if k in current}
        groups.append({**saved, **implementation})
    optimizer.load_state_dict({**state, "param_groups": groups})
