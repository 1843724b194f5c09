"""facebookresearch/DiT state dicts in our DiT: the adaLN-Zero variant computes the reference
function exactly; the AdaLN-Single (PixArt) mapping is exact where it can be and says where not;
bad checkpoints are one-line errors naming the keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.models.dit_import import (
    check_dit_keys,
    dit_reference_keys,
    dit_to_adaln_single,
    dit_to_adaln_zero,
    import_dit_expert,
    infer_dit_config,
    load_dit_adaln_single,
    load_dit_adaln_zero,
    read_state_dict,
)

# A small DiT in the reference layout: 8 px latents of 2 channels, patch 2, hidden 32, 2 blocks,
# 2 heads, 5 classes (+ the null row), learned sigma (4 output channels).
D, DEPTH, HEADS, P, C, SIDE, K = 32, 2, 2, 2, 2, 8, 5


def reference_pos_embed(dim: int, grid: int) -> np.ndarray:
    """The MAE / DiT 2-D sin-cos table, written from the reference's description (numpy)."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_w, grid_h = np.meshgrid(
        np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)
    )
    return np.concatenate([one_d(dim // 2, grid_w), one_d(dim // 2, grid_h)], axis=1)


def reference_state_dict(seed: int = 0, depth: int = DEPTH) -> dict[str, Tensor]:
    """Random weights under facebookresearch/DiT's key names and shapes (non-zero modulation)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> Tensor:
        return scale * torch.randn(*shape, generator=gen)

    n = (SIDE // P) ** 2
    state = {
        "pos_embed": torch.from_numpy(reference_pos_embed(D, SIDE // P)).float()[None],
        "x_embedder.proj.weight": rand(D, C, P, P),
        "x_embedder.proj.bias": rand(D),
        "t_embedder.mlp.0.weight": rand(D, 256, scale=0.05),
        "t_embedder.mlp.0.bias": rand(D),
        "t_embedder.mlp.2.weight": rand(D, D),
        "t_embedder.mlp.2.bias": rand(D),
        "y_embedder.embedding_table.weight": rand(K + 1, D),
    }
    assert state["pos_embed"].shape == (1, n, D)
    for i in range(depth):
        state.update(
            {
                f"blocks.{i}.attn.qkv.weight": rand(3 * D, D),
                f"blocks.{i}.attn.qkv.bias": rand(3 * D),
                f"blocks.{i}.attn.proj.weight": rand(D, D),
                f"blocks.{i}.attn.proj.bias": rand(D),
                f"blocks.{i}.mlp.fc1.weight": rand(4 * D, D),
                f"blocks.{i}.mlp.fc1.bias": rand(4 * D),
                f"blocks.{i}.mlp.fc2.weight": rand(D, 4 * D),
                f"blocks.{i}.mlp.fc2.bias": rand(D),
                f"blocks.{i}.adaLN_modulation.1.weight": rand(6 * D, D),
                f"blocks.{i}.adaLN_modulation.1.bias": rand(6 * D),
            }
        )
    state.update(
        {
            "final_layer.linear.weight": rand(P * P * 2 * C, D),
            "final_layer.linear.bias": rand(P * P * 2 * C),
            "final_layer.adaLN_modulation.1.weight": rand(2 * D, D),
            "final_layer.adaLN_modulation.1.bias": rand(2 * D),
        }
    )
    return state


def reference_forward(sd: dict[str, Tensor], x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """facebookresearch/DiT's forward, written functionally over the state dict in float64
    (explicit softmax attention; y uses row K for the null class)."""
    sd = {k: v.double() for k, v in sd.items()}

    def linear(h: Tensor, name: str) -> Tensor:
        return h @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        return h * (1 + scale[:, None]) + shift[:, None]

    def norm(h: Tensor) -> Tensor:
        return F.layer_norm(h, (h.shape[-1],), eps=1e-6)

    B = x.shape[0]
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=P)
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]  # (B, N, D)
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = t[:, None].double() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    t_emb = linear(F.silu(linear(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]
    for i in range(DEPTH):
        b = f"blocks.{i}"
        mods = linear(F.silu(c), f"{b}.adaLN_modulation.1").chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        a = modulate(norm(h), shift_msa, scale_msa)
        qkv = linear(a, f"{b}.attn.qkv").reshape(B, -1, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // HEADS), dim=-1) @ v
        attn = linear(attn.transpose(1, 2).reshape(B, -1, D), f"{b}.attn.proj")
        h = h + gate_msa[:, None] * attn
        m = modulate(norm(h), shift_mlp, scale_mlp)
        m = linear(F.gelu(linear(m, f"{b}.mlp.fc1"), approximate="tanh"), f"{b}.mlp.fc2")
        h = h + gate_mlp[:, None] * m
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = linear(modulate(norm(h), shift, scale), "final_layer.linear")  # (B, N, P*P*2C)
    g = SIDE // P
    out = out.reshape(B, g, g, P, P, 2 * C)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(B, 2 * C, SIDE, SIDE)


def inputs(seed: int = 1, t: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, C, SIDE, SIDE, generator=gen, dtype=torch.float64)
    steps = torch.tensor([0.0, 17.0, 250.0, 499.0, 731.0, 999.0], dtype=torch.float64)
    if t is not None:
        steps = torch.full_like(steps, t)
    labels = torch.tensor([0, 4, K, 2, K, 1])  # reference ids; K = null
    return x, steps, labels


def ours(labels: Tensor) -> Tensor:
    return torch.where(labels == K, -1, labels)


# --------------------------------------------------------------------------- adaLN-Zero


def test_adaln_zero_variant_computes_the_reference_function():
    state = reference_state_dict()
    model = load_dit_adaln_zero(state, num_heads=HEADS).double()
    assert model.config == DiTConfig(
        input_size=SIDE, in_channels=C, patch_size=P, hidden_size=D, depth=DEPTH,
        num_heads=HEADS, num_classes=K, learned_sigma=True, modulation="adaln-zero",
    )  # fmt: skip
    x, t, y = inputs()
    with torch.no_grad():
        got = model(x, t, ours(y))
    expected = reference_forward(state, x, t, y)
    assert got.shape == (6, 2 * C, SIDE, SIDE)
    err = float((got - expected).abs().max() / expected.abs().max())
    assert err < 1e-12, err
    # the reference pos_embed is what our own fixed table computes (same layout)
    assert torch.allclose(
        model.x_embedder.pos_embed.double(), state["pos_embed"].double(), atol=1e-6
    )


def test_adaln_zero_in_float32_matches_to_float_rounding():
    state = reference_state_dict(seed=2)
    model = load_dit_adaln_zero(state, num_heads=HEADS)
    x, t, y = inputs(seed=3)
    with torch.no_grad():
        got = model(x.float(), t.float(), ours(y)).double()
    expected = reference_forward(state, x, t, y)
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


def test_pt_and_safetensors_files_and_training_checkpoints_read_the_same(tmp_path):
    import safetensors.torch

    state = reference_state_dict()
    torch.save(state, tmp_path / "dit.pt")
    torch.save({"model": state, "ema": state}, tmp_path / "train.pt")
    safetensors.torch.save_file(state, str(tmp_path / "dit.safetensors"))
    for name in ("dit.pt", "train.pt", "dit.safetensors"):
        loaded = read_state_dict(tmp_path / name)
        assert sorted(loaded) == sorted(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_imported_expert_plugs_in_through_the_ddpm_adapter(tmp_path):
    from hetdiff.experts.build import load_velocity_model
    from hetdiff.objectives.velocity import DDPMVelocity

    state = reference_state_dict()
    torch.save(state, tmp_path / "dit.pt")
    path = import_dit_expert(tmp_path / "dit.pt", tmp_path / "dit.safetensors", num_heads=HEADS)
    velocity, spec = load_velocity_model(path)
    assert isinstance(velocity, DDPMVelocity) and velocity.learned_variance
    assert (spec.objective, spec.prediction, spec.schedule["name"]) == ("ddpm", "eps", "linear")
    assert spec.learned_variance and spec.num_classes == K and spec.resolution == SIDE
    assert spec.provenance["imported_from"]["format"] == "facebookresearch/DiT"
    assert len(spec.provenance["imported_from"]["sha256"]) == 64
    # the adapter reads the eps channels of the reference at the fractional step of t
    x, _, y = inputs()
    t = torch.full((6,), 0.4)
    with torch.no_grad():
        v = velocity(x.float(), t, ours(y)).double()
    scale = math.sqrt(0.6**2 + 0.4**2)
    step = velocity.schedule.step_of_t(t.double())
    eps = reference_forward(state, x / scale, step, y)[:, :C]
    alpha, sigma = 0.6 / scale, 0.4 / scale
    x0 = (x / scale - sigma * eps) / alpha
    assert float((v - (eps - x0)).abs().max() / (eps - x0).abs().max()) < 1e-4


# --------------------------------------------------------------------------- AdaLN-Single


def test_adaln_single_mapping_is_exact_where_it_can_be_and_says_where_not():
    # float64 weights: the tables are stored in the checkpoint's dtype
    state = {k: v.double() for k, v in reference_state_dict(seed=4).items()}
    zero = DiT(infer_dit_config(state, num_heads=HEADS)).double()  # float64 end to end
    zero.load_state_dict(dit_to_adaln_zero(state))
    single = DiT(infer_dit_config(state, num_heads=HEADS, modulation="adaln-single")).double()
    mapped, report = dit_to_adaln_single(state, t_ref=500.0)
    single.load_state_dict(mapped)
    # the float32 loader does the same mapping
    loaded, _ = load_dit_adaln_single(state, t_ref=500.0, num_heads=HEADS)
    assert all(torch.equal(v, mapped[k].float()) for k, v in loaded.state_dict().items())
    ours_state = single.state_dict()
    # copied parameters are bitwise the reference's
    renames = {"x_embedder.pos_embed": "pos_embed", "y_embedder.table.weight":
               "y_embedder.embedding_table.weight"}  # fmt: skip
    for key in report.exact:
        source = renames.get(key, key.replace("t_block.1", "blocks.0.adaLN_modulation.1"))
        if "scale_shift_table" in key:
            assert torch.equal(ours_state[key], torch.zeros_like(ours_state[key]))  # block 0
        else:
            assert torch.equal(ours_state[key], state[source].double()), key
    assert set(report.exact) | set(report.approximate) == set(ours_state)
    assert set(report.approximate) == {
        "blocks.1.scale_shift_table",
        "final_layer.scale_shift_table",
    }
    assert all("exact at step 500" in note for note in report.approximate.values())

    # exact at the reference step with the null class ...
    x, t, _ = inputs(t=500.0)
    null = torch.full((6,), -1)
    with torch.no_grad():
        a, b = single(x, t, null), zero(x, t, null)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-12
    # ... block 0's modulation is exact at every (t, y) ...
    _, t, y = inputs()
    with torch.no_grad():
        c = single.t_embedder(t) + single.y_embedder(ours(y))
        mapped = single.t_block(c).view(6, 6, D) + single.blocks[0].scale_shift_table
        original = zero.blocks[0].adaLN_modulation(c).view(6, 6, D)
        assert torch.allclose(mapped, original, rtol=0, atol=1e-12)
        # ... and the rest is an approximation away from it (as documented)
        mapped1 = single.t_block(c).view(6, 6, D) + single.blocks[1].scale_shift_table
        assert (mapped1 - zero.blocks[1].adaLN_modulation(c).view(6, 6, D)).abs().max() > 1e-3
        assert (single(x, t, ours(y)) - zero(x, t, ours(y))).abs().max() > 1e-3


# --------------------------------------------------------------------------- bad input


def test_missing_and_unexpected_keys_are_named_in_one_line():
    state = reference_state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.0.attn.q_norm.weight"] = torch.ones(D)
    with pytest.raises(HetdiffError) as err:
        check_dit_keys(state)
    message = str(err.value)
    assert "missing keys blocks.1.mlp.fc2.bias" in message
    assert "unexpected keys blocks.0.attn.q_norm.weight" in message and "\n" not in message
    with pytest.raises(HetdiffError, match="'pos_embed' is missing"):
        check_dit_keys({"x_embedder.proj.weight": torch.zeros(1)})
    assert len(dit_reference_keys(28)) == 8 + 28 * 10 + 4  # DiT-XL/2: 292 tensors


def test_architecture_mismatch_is_a_one_line_error():
    state = reference_state_dict()
    with pytest.raises(
        HetdiffError, match="architecture mismatch: the checkpoint has hidden_size 32"
    ):
        infer_dit_config(state, model="DiT-S/2")
    with pytest.raises(HetdiffError, match="pass --num-heads"):
        infer_dit_config(state)
    wrong = DiTConfig(input_size=SIDE, in_channels=C, patch_size=P, hidden_size=D, depth=DEPTH,
                      num_heads=HEADS, num_classes=K + 2, learned_sigma=True,
                      modulation="adaln-zero")  # fmt: skip
    with pytest.raises(HetdiffError) as err:
        load_dit_adaln_zero(state, wrong)
    assert "y_embedder.embedding_table.weight has shape (6, 32)" in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(HetdiffError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(HetdiffError, match="weights-only torch file") as err:
        read_state_dict(tmp_path / "junk.pt")
    assert "\n" not in str(err.value)


def test_convert_cli_imports_a_dit_file_either_way(tmp_path, capsys):
    from hetdiff.cli import main
    from hetdiff.experts.build import load_velocity_model
    from hetdiff.experts.store import read_spec

    torch.save(reference_state_dict(), tmp_path / "dit.pt")
    base = ["convert", "--from", str(tmp_path / "dit.pt"), "--to", "expert", "--num-heads", "2"]
    assert main([*base, "--out", str(tmp_path / "zero")]) == 0
    assert main([*base, "--out", str(tmp_path / "single"), "--modulation", "adaln-single"]) == 0
    zero = read_spec(tmp_path / "zero" / "expert.safetensors")
    single = read_spec(tmp_path / "single" / "expert.safetensors")
    assert zero.model["modulation"] == "adaln-zero" and zero.provenance["mapping"]["exact"]
    assert single.model["modulation"] == "adaln-single"
    assert single.provenance["mapping"]["approximate"] == [
        "blocks.1.scale_shift_table",
        "final_layer.scale_shift_table",
    ]
    velocity, _ = load_velocity_model(tmp_path / "single" / "expert.safetensors")
    assert velocity.t_range[1] < 1.0  # a DDPM (linear schedule) expert's range
    # the adaLN-Zero expert converts on for flow fine-tuning like any DDPM expert
    argv = ["convert", "--from", str(tmp_path / "zero" / "expert.safetensors"), "--to", "flow"]
    assert main([*argv, "--out", str(tmp_path / "flow")]) == 0
    assert main([*base, "--out", str(tmp_path / "bad"), "--model", "DiT-XL/2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "architecture mismatch" in err and "DiT-XL/2 has hidden_size 1152" in err
