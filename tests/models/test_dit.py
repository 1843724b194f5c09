"""AdaLN-Single DiT: shapes, zero init, fixed embeddings vs float64 references, conditioning."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hetdiff.conditioning import Conditioning
from hetdiff.errors import HetdiffError
from hetdiff.models.dit import DIT_CONFIGS, DiT, DiTConfig, build_dit, dit_config
from hetdiff.models.embeddings import timestep_embedding

TINY = DiTConfig(input_size=8, in_channels=2, patch_size=2, hidden_size=32, depth=2, num_heads=4)


def randomized(model: DiT, seed: int = 0) -> DiT:
    """Give every parameter a random value, so zero-initialized paths cannot hide anything."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.eval()


def inputs(config: DiTConfig, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=gen)
    t = torch.rand(batch, generator=gen) * 999.0
    return x, t


def one_adamw_step(model: DiT, cond: Conditioning | None, seed: int = 2) -> None:
    x, t = inputs(model.config, batch=4, seed=seed)
    target = torch.randn(x.shape[0], model.config.out_channels, *x.shape[2:])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.nn.functional.mse_loss(model(x, t, cond), target).backward()
    optimizer.step()


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("learned_sigma", [False, True])
@pytest.mark.parametrize("patch_size", [2, 4])
def test_output_shape(learned_sigma: bool, patch_size: int) -> None:
    config = DiTConfig(
        **{**TINY.to_dict(), "patch_size": patch_size, "learned_sigma": learned_sigma}
    )
    x, t = inputs(config)
    out = DiT(config)(x, t)
    assert config.out_channels == (4 if learned_sigma else 2)
    assert out.shape == (3, config.out_channels, 8, 8)


def test_scalar_timestep_broadcasts_and_fractional_steps_matter() -> None:
    model = randomized(DiT(TINY))
    x, _ = inputs(TINY)
    with torch.no_grad():
        scalar = model(x, torch.tensor(500.0))
        vector = model(x, torch.full((3,), 500.0))
        half_step = model(x, torch.full((3,), 500.5))
    torch.testing.assert_close(scalar, vector, rtol=0, atol=0)
    assert (half_step - vector).abs().max() > 1e-4  # float timesteps are not truncated


# ----------------------------------------------------------------------------- init
def test_untrained_output_is_exactly_zero_then_nonzero_after_one_step() -> None:
    torch.manual_seed(0)
    model = DiT(dataclass_with(TINY, num_classes=10, learned_sigma=True))
    x, t = inputs(model.config)
    labels = torch.tensor([0, 5, -1])
    assert torch.count_nonzero(model(x, t, labels)) == 0
    assert torch.count_nonzero(model.t_block[1].weight) == 0
    one_adamw_step(model, Conditioning(class_labels=torch.tensor([1, 2, -1, 3])))
    assert model(x, t, labels).abs().min() > 0


def test_adaln_single_tables_are_per_block_parameters_with_pixart_init() -> None:
    torch.manual_seed(0)
    model = DiT(dit_config("small"))
    tables = [block.scale_shift_table for block in model.blocks]
    assert all(table.shape == (6, 128) and table.requires_grad for table in tables)
    assert model.final_layer.scale_shift_table.shape == (2, 128)
    assert not torch.equal(tables[0], tables[1])
    std = torch.cat([table.flatten() for table in tables]).std().item()
    assert abs(std - 1 / math.sqrt(128)) < 0.01  # randn / sqrt(hidden)
    assert model.t_block[1].weight.shape == (6 * 128, 128)  # one shared t_block


# ----------------------------------------------------------------------------- embeddings
def numpy_sincos_2d(dim: int, grid: int) -> np.ndarray:
    """Reference: token (row, col) -> [sin(col w), cos(col w), sin(row w), cos(row w)]."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    table = np.zeros((grid * grid, dim))
    for row in range(grid):
        for col in range(grid):
            n = row * grid + col
            table[n] = np.concatenate(
                [np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)]
            )
    return table


def test_pos_embedding_is_a_fixed_buffer_matching_float64_reference() -> None:
    model = DiT(TINY)
    pos = model.x_embedder.pos_embed
    assert pos.shape == (1, 16, 32) and not pos.requires_grad
    assert all(pos is not p for p in model.parameters())
    assert "x_embedder.pos_embed" in model.state_dict()
    np.testing.assert_allclose(pos[0].double().numpy(), numpy_sincos_2d(32, 4), rtol=0, atol=1e-7)
    one_adamw_step(model, None)
    np.testing.assert_allclose(pos[0].double().numpy(), numpy_sincos_2d(32, 4), rtol=0, atol=1e-7)


def test_timestep_embedding_matches_float64_reference_at_fractional_steps() -> None:
    steps = np.array([0.0, 0.37, 12.5, 998.7, 999.0])
    half = 128
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    expected = np.concatenate([np.cos(steps[:, None] * freqs), np.sin(steps[:, None] * freqs)], 1)
    exact = timestep_embedding(torch.tensor(steps, dtype=torch.float64), 256)
    np.testing.assert_allclose(exact.numpy(), expected, rtol=0, atol=1e-12)
    single = timestep_embedding(torch.tensor(steps, dtype=torch.float32), 256)
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.double().numpy(), expected, rtol=0, atol=2e-4)


# ----------------------------------------------------------------------------- class labels
def test_null_label_uses_its_own_row_and_differs_from_a_class_after_a_step() -> None:
    torch.manual_seed(0)
    config = dataclass_with(TINY, num_classes=3)
    model = DiT(config)
    assert model.y_embedder.table.num_embeddings == 4  # 3 classes + null row
    one_adamw_step(model, Conditioning(class_labels=torch.tensor([0, 1, 2, -1])))
    x, t = inputs(config, batch=2)
    with torch.no_grad():
        null = model(x, t, torch.tensor([-1, -1]))
        no_cond = model(x, t)  # a class model given no labels means the null class
        class_zero = model(x, t, torch.tensor([0, 0]))
    torch.testing.assert_close(null, no_cond, rtol=0, atol=0)
    assert (null - class_zero).abs().max() > 1e-5


def dataclass_with(config: DiTConfig, **changes: object) -> DiTConfig:
    return DiTConfig.from_dict({**config.to_dict(), **changes})


# ----------------------------------------------------------------------------- text
TEXT = dataclass_with(TINY, num_classes=5, context_dim=6)
POOLED = dataclass_with(TEXT, pooled_context=True)  # + the pooled-caption path into c


def text_cond(batch: int = 3, length: int = 5, seed: int = 3) -> Conditioning:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False
    mask[1, 1:] = False
    return Conditioning(
        class_labels=torch.tensor([0, 4, -1])[:batch],
        context=torch.randn(batch, length, 6, generator=gen),
        context_mask=mask,
    )


@pytest.mark.parametrize("config", [TEXT, POOLED], ids=["cross-attention", "pooled"])
def test_masked_out_tokens_do_not_affect_output_but_real_tokens_do(config: DiTConfig) -> None:
    model = randomized(DiT(config))
    x, t = inputs(config)
    cond = text_cond()
    with torch.no_grad():
        base = model(x, t, cond)
        junk = cond.context.clone()
        junk[~cond.context_mask] = 1e3  # only masked positions change
        masked_changed = model(x, t, Conditioning(cond.class_labels, junk, cond.context_mask))
        real = cond.context.clone()
        real[:, 0] += 1.0  # a real token in every row
        real_changed = model(x, t, Conditioning(cond.class_labels, real, cond.context_mask))
    torch.testing.assert_close(masked_changed, base, rtol=0, atol=1e-6)
    assert ((real_changed - base).flatten(1).abs().amax(1) > 1e-4).all()


@pytest.mark.parametrize("config", [TEXT, POOLED], ids=["cross-attention", "pooled"])
def test_null_context_is_a_learned_condition_independent_of_token_values(config: DiTConfig) -> None:
    model = randomized(DiT(config))
    x, t = inputs(config)
    cond = text_cond()
    with torch.no_grad():
        null = model(x, t, cond.null())
        null_other = model(
            x,
            t,
            Conditioning(
                cond.null().class_labels, torch.randn(3, 5, 6), torch.zeros(3, 5, dtype=torch.bool)
            ),
        )
        no_context = model(x, t, Conditioning(class_labels=torch.full((3,), -1)))
        conditional = model(x, t, cond)
    assert torch.isfinite(null).all()
    torch.testing.assert_close(null, null_other, rtol=0, atol=1e-6)
    torch.testing.assert_close(null, no_context, rtol=0, atol=1e-5)
    assert (null - conditional).abs().max() > 1e-3


def test_cross_attention_is_a_pure_residual_that_leaves_the_class_path_alone() -> None:
    torch.manual_seed(0)
    class_only = randomized(DiT(dataclass_with(TEXT, context_dim=None)))
    with_text = DiT(TEXT)
    missing, unexpected = with_text.load_state_dict(class_only.state_dict(), strict=False)
    assert not unexpected
    assert all("cross_attn" in k or "context_embedder" in k for k in missing)
    x, t = inputs(TEXT)
    cond = text_cond()
    with torch.no_grad():
        # cross-attention output projections start at zero (PixArt init)
        torch.testing.assert_close(with_text(x, t, cond), class_only(x, t, cond.class_labels))
        with_text.blocks[0].cross_attn.proj.weight.normal_()
        assert (with_text(x, t, cond) - class_only(x, t, cond.class_labels)).abs().max() > 1e-3


def test_pooled_path_adds_the_projected_mean_of_real_tokens_to_c() -> None:
    """c gains proj(mean of the real tokens) (float64 reference); the null row gains the learned
    null vector; a model without the flag has no pooler and old config dicts still load."""
    model = randomized(DiT(POOLED)).double()
    cond = text_cond()
    context, mask = cond.context.double(), cond.context_mask
    with torch.no_grad():
        got = model.context_pooler(context, mask, 3)
        proj = model.context_pooler.proj
        for i in range(3):
            mean = context[i][mask[i]].mean(0)
            expected = proj[2](torch.nn.functional.silu(proj[0](mean)))
            torch.testing.assert_close(got[i], expected, rtol=1e-12, atol=1e-12)
        empty = model.context_pooler(context, torch.zeros_like(mask), 3)
        torch.testing.assert_close(empty, model.context_pooler.null.expand(3, -1))
        torch.testing.assert_close(model.context_pooler(None, None, 3), empty)
    assert DiT(TEXT).context_pooler is None
    legacy = {k: v for k, v in TEXT.to_dict().items() if k != "pooled_context"}
    assert DiTConfig.from_dict(legacy) == TEXT
    with pytest.raises(HetdiffError, match="pooled_context needs context_dim"):
        dataclass_with(TINY, pooled_context=True)


# ----------------------------------------------------------------------------- batch & determinism
@pytest.mark.parametrize("config", [TEXT, POOLED], ids=["cross-attention", "pooled"])
def test_batched_output_equals_per_sample_outputs(config: DiTConfig) -> None:
    model = randomized(DiT(config))
    x, t = inputs(config)
    cond = text_cond()
    with torch.no_grad():
        batched = model(x, t, cond)
        rows = [model(x[i : i + 1], t[i : i + 1], cond.index(torch.tensor([i]))) for i in range(3)]
        again = model(x, t, cond)
    torch.testing.assert_close(batched, torch.cat(rows), rtol=0, atol=1e-5)
    torch.testing.assert_close(batched, again, rtol=0, atol=0)  # deterministic forward


def test_same_seed_builds_identical_models() -> None:
    torch.manual_seed(7)
    first = build_dit("tiny", num_classes=10)
    torch.manual_seed(7)
    second = build_dit("tiny", num_classes=10)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_small_model_fits_a_fixed_batch_far_better_than_a_constant() -> None:
    torch.manual_seed(0)
    model = DiT(TINY)
    x, t = inputs(TINY, batch=8)
    target = torch.sin(3 * x) + 0.5  # a smooth function of the input
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x, t), target)
        loss.backward()
        optimizer.step()
    best_constant = target.var(unbiased=False).item()  # MSE of predicting the mean
    assert loss.item() < 0.25 * best_constant


# ----------------------------------------------------------------------------- config & errors
def test_config_round_trips_through_json() -> None:
    config = dit_config(
        "DiT-B/4",
        input_size=32,
        in_channels=4,
        num_classes=1000,
        learned_sigma=True,
        context_dim=384,
    )
    restored = DiTConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert (config.hidden_size, config.depth, config.num_heads, config.patch_size) == (
        768,
        12,
        12,
        4,
    )


def test_registry_sizes() -> None:
    assert set(DIT_CONFIGS) >= {
        "tiny",
        "small",
        "DiT-S/2",
        "DiT-S/4",
        "DiT-B/2",
        "DiT-B/4",
        "DiT-L/2",
        "DiT-XL/2",
    }
    xl = dit_config("DiT-XL/2")
    assert (xl.hidden_size, xl.depth, xl.num_heads, xl.patch_size) == (1152, 28, 16, 2)
    count = {
        name: sum(p.numel() for p in build_dit(name).parameters()) for name in ("tiny", "small")
    }
    assert 0.2e6 < count["tiny"] < 0.4e6
    assert 1e6 < count["small"] < 2e6


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DiTConfig(input_size=28, patch_size=3), "28 is not divisible by patch_size 3"),
        (lambda: DiTConfig(hidden_size=64, num_heads=5), "64 is not divisible by num_heads 5"),
        (lambda: DiTConfig(hidden_size=66, num_heads=3), "divisible by 4"),
        (lambda: dit_config("DiT-Q/2"), r"unknown DiT model 'DiT-Q/2'; valid names: tiny, small"),
        (lambda: DiTConfig.from_dict({"hidden_size": 64, "widht": 3}), r"\['widht'\]"),
        (lambda: build_dit(TINY, depht=2), r"\['depht'\]"),
    ],
)
def test_bad_configs_raise_one_line_errors(make, message: str) -> None:
    with pytest.raises(HetdiffError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("x_shape", "cond", "config", "message"),
    [
        ((2, 3, 8, 8), None, TINY, r"\(B, 2, 8, 8\), got \(2, 3, 8, 8\)"),
        ((2, 2, 16, 16), None, TINY, r"got \(2, 2, 16, 16\)"),
        ((2, 2, 8, 8), torch.tensor([0, 1]), TINY, "unconditional model"),
        ((2, 2, 8, 8), torch.tensor([0, 3]), dataclass_with(TINY, num_classes=3), r"\[0, 3\)"),
        ((2, 2, 8, 8), torch.tensor([-2, 0]), dataclass_with(TINY, num_classes=3), r"\[-2, 0\]"),
        ((2, 2, 8, 8), Conditioning(context=torch.ones(2, 1, 4)), TINY, "without cross-attention"),
        ((2, 2, 8, 8), torch.tensor([0, 1, 2]), dataclass_with(TINY, num_classes=3), "3 rows"),
    ],
)
def test_bad_inputs_raise(x_shape, cond, config: DiTConfig, message: str) -> None:
    with pytest.raises(HetdiffError, match=message):
        DiT(config)(torch.zeros(x_shape), torch.zeros(x_shape[0]), cond)


# ----------------------------------------------------------------------------- peer check
def test_matches_diffusers_pixart_given_the_same_weights() -> None:
    """Same weights in diffusers' PixArtTransformer2DModel give the same output (bench extra)."""
    diffusers = pytest.importorskip("diffusers")
    heads, hidden, depth = 4, 32, 2
    torch.manual_seed(0)
    theirs = diffusers.PixArtTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        in_channels=2,
        out_channels=2,
        num_layers=depth,
        cross_attention_dim=hidden,
        caption_channels=6,
        sample_size=8,
        patch_size=2,
        use_additional_conditions=False,
    )
    for param in theirs.parameters():
        torch.nn.init.normal_(param, std=0.1)
    ours = DiT(dataclass_with(TINY, hidden_size=hidden, depth=depth, context_dim=6))
    sd = theirs.state_dict()
    mapped = {
        "x_embedder.pos_embed": ours.x_embedder.pos_embed,
        "context_embedder.null_token": ours.context_embedder.null_token,
        "final_layer.scale_shift_table": sd["scale_shift_table"],
    }
    pairs = {
        "x_embedder.proj": "pos_embed.proj",
        "t_block.1": "adaln_single.linear",
        "t_embedder.mlp.0": "adaln_single.emb.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "adaln_single.emb.timestep_embedder.linear_2",
        "context_embedder.proj.0": "caption_projection.linear_1",
        "context_embedder.proj.2": "caption_projection.linear_2",
        "final_layer.linear": "proj_out",
    }
    for i in range(depth):
        ptb = f"transformer_blocks.{i}."
        mapped[f"blocks.{i}.scale_shift_table"] = sd[ptb + "scale_shift_table"]
        pairs |= {
            f"blocks.{i}.attn.proj": ptb + "attn1.to_out.0",
            f"blocks.{i}.cross_attn.q": ptb + "attn2.to_q",
            f"blocks.{i}.cross_attn.proj": ptb + "attn2.to_out.0",
            f"blocks.{i}.mlp.fc1": ptb + "ff.net.0.proj",
            f"blocks.{i}.mlp.fc2": ptb + "ff.net.2",
        }
        for kind in ("weight", "bias"):
            mapped[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [sd[f"{ptb}attn1.to_{n}.{kind}"] for n in "qkv"]
            )
            mapped[f"blocks.{i}.cross_attn.kv.{kind}"] = torch.cat(
                [sd[f"{ptb}attn2.to_{n}.{kind}"] for n in "kv"]
            )
    for ours_name, their_name in pairs.items():
        for kind in ("weight", "bias"):
            mapped[f"{ours_name}.{kind}"] = sd[f"{their_name}.{kind}"]
    ours.load_state_dict(mapped, strict=True)
    torch.testing.assert_close(
        ours.x_embedder.pos_embed, theirs.pos_embed.pos_embed, rtol=0, atol=1e-6
    )
    x, t = inputs(TINY)
    cond = text_cond()
    cond = Conditioning(context=cond.context, context_mask=cond.context_mask)
    with torch.no_grad():
        expected = theirs(
            x,
            encoder_hidden_states=cond.context,
            timestep=t,
            encoder_attention_mask=cond.context_mask,
            return_dict=False,
        )[0]
        actual = ours(x, t, cond)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
