"""Foreign checkpoints in: facebookresearch/DiT state dicts loaded into our DiT.

The reference layout (facebookresearch/DiT ``models.py``; D = hidden, P = patch, C = channels,
N = patch tokens, K = classes, L = depth):

    pos_embed                          (1, N, D)     fixed 2-D sin-cos, stored in the state dict
    x_embedder.proj.{weight,bias}      (D, C, P, P), (D,)
    t_embedder.mlp.{0,2}.{weight,bias} (D, 256), (D, D): MLP of [cos, sin] features of the step
    y_embedder.embedding_table.weight  (K + 1, D)    row K = the null class (CFG)
    blocks.i.attn.{qkv,proj}.*         (3D, D), (D, D)
    blocks.i.mlp.{fc1,fc2}.*           (4D, D), (D, 4D)
    blocks.i.adaLN_modulation.1.*      (6D, D)       adaLN-Zero: SiLU(c) -> shift/scale/gate x 2
    final_layer.linear.*               (P*P*C_out, D), C_out = 2C with learned sigma
    final_layer.adaLN_modulation.1.*   (2D, D)

with c = t_emb(s) + y_emb(y) at an integer DDPM step s. Two targets:

adaLN-Zero (exact): ``DiTConfig(modulation="adaln-zero")`` has the same parameters under the
same names except two renames (``pos_embed`` -> ``x_embedder.pos_embed``,
``y_embedder.embedding_table`` -> ``y_embedder.table``), so the loaded model computes the same
function as the reference (to float rounding of the timestep features).

AdaLN-Single (PixArt-alpha's re-parameterization, Chen et al. 2023, section 2.3): one shared
``t_block`` replaces the L per-block modulation MLPs f_i(c) = W_i SiLU(c) + b_i, and each block
keeps a (6, D) table E_i with modulation t_block(c) + E_i. Mapping, with c* = the reference
conditioning at step ``t_ref`` (PixArt: 500) and the null class:

    t_block            <- f_s (block ``shared_from``'s MLP)                    exact copy
    E_i                <- f_i(c*) - f_s(c*)                                     exact at c* only
    final table (2, D) <- f_final(c*) - c*  (ours: shift, scale = table + c)    exact at c* only
    everything else    <- copied                                                exact

So block s is exact at every (t, y); block i != s is off by (W_i - W_s)(SiLU(c) - SiLU(c*)),
and the final modulation by (f_final(c) - f_final(c*)) - (c - c*), both zero at c* = c.
``MappingReport`` lists which of our parameters are exact and which are approximations.
A user passes a local path; nothing here downloads. ``hetdiff.experts.dit_import`` writes the
loaded network as an expert checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.models.dit import DIT_CONFIGS, DiT, DiTConfig

REFERENCE_T = 500.0  # PixArt-alpha's step for the re-parameterization
_RENAMES = {  # reference name -> our name (adaLN-Zero variant)
    "pos_embed": "x_embedder.pos_embed",
    "y_embedder.embedding_table.weight": "y_embedder.table.weight",
}
_BLOCK_PARTS = (
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "adaLN_modulation.1.weight",
    "adaLN_modulation.1.bias",
)


#################################################################################
#                              Reading and checking                             #
#################################################################################


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a local ``.safetensors`` or ``.pt``/``.pth`` file (CPU tensors).

    ``.pt`` files are read with ``torch.load(weights_only=True)`` (no arbitrary unpickling). A
    DiT training checkpoint ``{"model", "ema", "opt", "args"}`` yields its ``ema`` weights.
    """
    path = Path(path)
    if not path.is_file():
        raise HetdiffError(f"checkpoint {path} does not exist; pass a local file path")
    if path.suffix == ".safetensors":
        import safetensors.torch

        try:
            return dict(safetensors.torch.load_file(str(path), device="cpu"))
        except Exception as err:  # safetensors raises its own error types
            raise HetdiffError(f"{path} is not a readable safetensors file ({err})") from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HetdiffError(
            f"cannot read {path} as a weights-only torch file ({first_line}); save just the "
            "state dict (torch.save(model.state_dict(), ...)) or convert it to safetensors"
        ) from err
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        obj = obj["ema"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise HetdiffError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def dit_reference_keys(depth: int) -> list[str]:
    """Every key of a facebookresearch/DiT state dict of ``depth`` blocks, in model order."""
    keys = [
        "pos_embed",
        "x_embedder.proj.weight",
        "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.0.bias",
        "t_embedder.mlp.2.weight",
        "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table.weight",
    ]
    keys += [f"blocks.{i}.{part}" for i in range(depth) for part in _BLOCK_PARTS]
    keys += [
        "final_layer.linear.weight",
        "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight",
        "final_layer.adaLN_modulation.1.bias",
    ]
    return keys


def _depth_of(state: dict[str, Tensor]) -> int:
    indices = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    indices = {i for i in indices if f"blocks.{i}.attn.qkv.weight" in state}
    return max(indices) + 1 if indices else 0


def _named(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_dit_keys(state: dict[str, Tensor]) -> int:
    """Check ``state`` has exactly the reference DiT keys; return its depth.

    Raises a one-line HetdiffError naming the missing and the unexpected keys.
    """
    for required in ("x_embedder.proj.weight", "pos_embed"):
        if required not in state:
            raise HetdiffError(
                f"not a facebookresearch/DiT state dict: key {required!r} is missing "
                f"(found {_named(sorted(state), 4)})"
            )
    depth = _depth_of(state)
    expected = dit_reference_keys(depth)
    missing = [k for k in expected if k not in state]
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_named(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_named(unexpected)}")
        raise HetdiffError(
            f"the DiT state dict does not match the reference layout: {'; '.join(parts)}"
        )
    return depth


def infer_dit_config(
    state: dict[str, Tensor],
    model: str | None = None,
    num_heads: int | None = None,
    modulation: str = "adaln-zero",
) -> DiTConfig:
    """The DiTConfig a reference state dict describes (checked with ``check_dit_keys``).

    Read from shapes: hidden size, channels, patch, depth, input size (from ``pos_embed``),
    MLP ratio, classes (table rows - 1, the last row being the null class) and learned sigma.
    Heads are not visible in the weights: they come from ``num_heads``, else the named config
    ``model``, else the named config whose (hidden, depth, patch) match. A ``model`` whose
    architecture differs from the checkpoint is a one-line error.
    """
    depth = check_dit_keys(state)
    proj = state["x_embedder.proj.weight"]  # (D, C, P, P)
    hidden, channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    num_patches = int(state["pos_embed"].shape[-2])
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise HetdiffError(f"pos_embed has {num_patches} tokens, not a square grid")
    out_channels = int(state["final_layer.linear.weight"].shape[0]) // (patch * patch)
    if out_channels not in (channels, 2 * channels):
        raise HetdiffError(
            f"final_layer.linear outputs {out_channels} channels per pixel for {channels} input "
            f"channels; expected {channels} or {2 * channels} (learned sigma)"
        )
    mlp_ratio = int(state["blocks.0.mlp.fc1.weight"].shape[0]) / hidden
    rows = int(state["y_embedder.embedding_table.weight"].shape[0])
    found = dict(hidden_size=hidden, depth=depth, patch_size=patch)
    if model is not None:
        if model not in DIT_CONFIGS:
            raise HetdiffError(
                f"unknown DiT model {model!r}; valid names: {', '.join(DIT_CONFIGS)}"
            )
        named = {k: DIT_CONFIGS[model][k] for k in found}
        if named != found:
            match = [n for n, c in DIT_CONFIGS.items() if {k: c[k] for k in found} == found]
            hint = f"pass --model {match[0]}" if match else "pass the matching --model"
            raise HetdiffError(
                f"architecture mismatch: the checkpoint has hidden_size {hidden}, depth {depth}, "
                f"patch {patch} but {model} has hidden_size {named['hidden_size']}, depth "
                f"{named['depth']}, patch {named['patch_size']}; {hint}"
            )
    if num_heads is None:
        candidates = [model] if model is not None else list(DIT_CONFIGS)
        for name in candidates:
            if {k: DIT_CONFIGS[name][k] for k in found} == found:
                num_heads = DIT_CONFIGS[name]["num_heads"]
                break
    if num_heads is None:
        raise HetdiffError(
            f"cannot tell the attention heads of a DiT with hidden_size {hidden}, depth {depth}, "
            f"patch {patch} (no named config matches); pass --num-heads"
        )
    return DiTConfig(
        input_size=grid * patch,
        in_channels=channels,
        patch_size=patch,
        hidden_size=hidden,
        depth=depth,
        num_heads=int(num_heads),
        mlp_ratio=mlp_ratio,
        num_classes=rows - 1,
        learned_sigma=out_channels == 2 * channels,
        modulation=modulation,
    )


def _check_shapes(mapped: dict[str, Tensor], model: DiT, source: dict[str, str]) -> None:
    expected = model.state_dict()
    for name, tensor in mapped.items():
        want = tuple(expected[name].shape)
        if tuple(tensor.shape) != want:
            raise HetdiffError(
                f"architecture mismatch: {source.get(name, name)} has shape "
                f"{tuple(tensor.shape)} but the model expects {want}"
            )


#################################################################################
#                                 adaLN-Zero                                    #
#################################################################################


def dit_to_adaln_zero(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a reference state dict to our adaLN-Zero DiT's keys (values untouched)."""
    check_dit_keys(state)
    return {_RENAMES.get(k, k): v for k, v in state.items()}


def load_dit_adaln_zero(
    state: dict[str, Tensor], config: DiTConfig | None = None, **infer: Any
) -> DiT:
    """Our adaLN-Zero DiT holding ``state`` (a reference DiT state dict), in eval mode.

    ``config`` defaults to ``infer_dit_config(state, **infer)``; a config whose shapes differ
    from the checkpoint is a one-line error naming the first mismatching key.
    """
    config = config or infer_dit_config(state, **infer)
    if config.modulation != "adaln-zero":
        raise HetdiffError("load_dit_adaln_zero needs a config with modulation='adaln-zero'")
    mapped = dit_to_adaln_zero(state)
    with torch.device("meta"):
        probe = DiT(config)
    _check_shapes(mapped, probe, {v: k for k, v in _RENAMES.items()})
    model = DiT(config)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


#################################################################################
#                       AdaLN-Single (PixArt re-parameterization)               #
#################################################################################


@dataclass(frozen=True)
class MappingReport:
    """What the AdaLN-Single mapping copied exactly and what it approximated (and how)."""

    t_ref: float
    shared_from: int
    exact: tuple[str, ...]
    approximate: dict[str, str] = field(default_factory=dict)


def reference_conditioning(state: dict[str, Tensor], t_ref: float) -> Tensor:
    """c* = t_emb(t_ref) + y_emb(null) of a reference DiT state dict, (D,) float64."""
    from hetdiff.models.embeddings import timestep_embedding

    w0, b0 = state["t_embedder.mlp.0.weight"].double(), state["t_embedder.mlp.0.bias"].double()
    w2, b2 = state["t_embedder.mlp.2.weight"].double(), state["t_embedder.mlp.2.bias"].double()
    features = timestep_embedding(torch.tensor([t_ref], dtype=torch.float64), w0.shape[1])[0]
    t_emb = w2 @ torch.nn.functional.silu(w0 @ features + b0) + b2  # (D,)
    return t_emb + state["y_embedder.embedding_table.weight"][-1].double()


def dit_to_adaln_single(
    state: dict[str, Tensor], t_ref: float = REFERENCE_T, shared_from: int = 0
) -> tuple[dict[str, Tensor], MappingReport]:
    """Map a reference DiT state dict onto our AdaLN-Single DiT's keys (see module docstring).

    Returns (state dict for ``DiTConfig(modulation="adaln-single")``, report). The tables are
    computed in float64 and stored in the checkpoint's dtype.
    """
    depth = check_dit_keys(state)
    if not 0 <= shared_from < depth:
        raise HetdiffError(f"shared_from must be a block index in [0, {depth}), got {shared_from}")
    silu_c = torch.nn.functional.silu(reference_conditioning(state, t_ref))  # (D,)
    hidden = silu_c.shape[0]

    def modulation(prefix: str) -> Tensor:  # f(c*) of one reference modulation MLP, float64
        weight = state[f"{prefix}.adaLN_modulation.1.weight"].double()
        return weight @ silu_c + state[f"{prefix}.adaLN_modulation.1.bias"].double()

    out: dict[str, Tensor] = {}
    exact: list[str] = []
    for key, value in state.items():
        if "adaLN_modulation" not in key:
            out[_RENAMES.get(key, key)] = value
            exact.append(_RENAMES.get(key, key))
    shared = f"blocks.{shared_from}"
    dtype = state[f"{shared}.adaLN_modulation.1.weight"].dtype
    out["t_block.1.weight"] = state[f"{shared}.adaLN_modulation.1.weight"]
    out["t_block.1.bias"] = state[f"{shared}.adaLN_modulation.1.bias"]
    exact += ["t_block.1.weight", "t_block.1.bias"]
    approximate: dict[str, str] = {}
    f_shared = modulation(shared)
    for i in range(depth):
        table = (modulation(f"blocks.{i}") - f_shared).view(6, hidden)
        out[f"blocks.{i}.scale_shift_table"] = table.to(dtype)
        if i == shared_from:
            exact.append(f"blocks.{i}.scale_shift_table")
        else:
            approximate[f"blocks.{i}.scale_shift_table"] = (
                f"f_{i}(c*) - f_{shared_from}(c*): exact at step {t_ref:g} with the null class; "
                f"elsewhere off by (W_{i} - W_{shared_from}) (SiLU(c) - SiLU(c*))"
            )
    c_star = reference_conditioning(state, t_ref)
    final = modulation("final_layer").view(2, hidden) - c_star[None]
    out["final_layer.scale_shift_table"] = final.to(dtype)
    approximate["final_layer.scale_shift_table"] = (
        f"f_final(c*) - c*: exact at step {t_ref:g} with the null class; elsewhere off by "
        "(f_final(c) - f_final(c*)) - (c - c*)"
    )
    return out, MappingReport(float(t_ref), shared_from, tuple(exact), approximate)


def load_dit_adaln_single(
    state: dict[str, Tensor],
    config: DiTConfig | None = None,
    t_ref: float = REFERENCE_T,
    shared_from: int = 0,
    **infer: Any,
) -> tuple[DiT, MappingReport]:
    """Our AdaLN-Single DiT initialized from a reference DiT state dict, and the report."""
    config = config or infer_dit_config(state, modulation="adaln-single", **infer)
    if config.modulation != "adaln-single":
        raise HetdiffError("load_dit_adaln_single needs a config with modulation='adaln-single'")
    mapped, report = dit_to_adaln_single(state, t_ref, shared_from)
    with torch.device("meta"):
        probe = DiT(config)
    _check_shapes(mapped, probe, {v: k for k, v in _RENAMES.items()})
    model = DiT(config)
    model.load_state_dict(mapped, strict=True)
    return model.eval(), report
