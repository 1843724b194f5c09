"""facebookresearch/DiT state dicts in our DiT: the adaLN-Zero variant computes the reference
function exactly; the AdaLN-Single (PixArt) mapping is exact where it can be and says where not;
bad checkpoints are one-line errors naming the keys."""

from __future__ import annotations

import pytest
import torch

from dit_reference import (
    DEPTH,
    HEADS,
    SIDE,
    C,
    D,
    K,
    P,
    inputs,
    ours,
    reference_forward,
    reference_state_dict,
)
from hetdiff.errors import HetdiffError
from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.models.dit_import import (
    check_dit_keys,
    dit_reference_keys,
    dit_to_adaln_single,
    dit_to_adaln_zero,
    infer_dit_config,
    load_dit_adaln_single,
    load_dit_adaln_zero,
    read_state_dict,
)

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
