"""Router checkpoints: the spec round-trips and is validated; weights reopen with the same logits;
foreign or broken files are refused in one line."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from hetdiff.errors import HetdiffError
from hetdiff.experts.router_store import (
    ROUTER_FILENAME,
    ROUTER_FORMAT,
    RouterSpec,
    load_router,
    read_router_spec,
    router_file,
    save_router,
)
from hetdiff.models.router import Router, RouterConfig


def test_spec_round_trip_and_validation():
    config = RouterConfig(4, 28, 1, num_classes=10)
    spec = RouterSpec.for_config(config, "abc123", data_spec="mnist5k", steps=7)
    assert spec.conditioning == "class" and spec.config == config
    assert RouterSpec.from_json(spec.to_json()) == spec
    bad = spec.to_json().replace('"conditioning": "class"', '"conditioning": "text"')
    with pytest.raises(HetdiffError, match="conditioning 'text' disagrees"):
        RouterSpec.from_json(bad)
    with pytest.raises(HetdiffError, match="unknown router spec keys"):
        RouterSpec.from_json(spec.to_json().replace('"steps"', '"stepz"'))
    with pytest.raises(HetdiffError, match="not valid JSON"):
        RouterSpec.from_json("{")


def test_checkpoint_reopens_with_the_same_logits(tmp_path):
    config = RouterConfig(3, 8, 3, num_classes=2)
    router = Router(config)
    for p in router.parameters():
        p.data.normal_(0, 0.2)
    spec = RouterSpec.for_config(config, "f00d", steps=3)
    path = save_router(tmp_path, router.state_dict(), spec)
    assert path == tmp_path / "router.safetensors"
    x, t, y = torch.randn(5, 3, 8, 8), torch.rand(5), torch.tensor([0, 1, -1, 0, 1])
    for where in (tmp_path, path):
        loaded, loaded_spec = load_router(where)
        assert loaded_spec == spec and not loaded.training
        assert torch.equal(loaded(x, t, y), router.eval()(x, t, y))
    assert read_router_spec(path).partition_fingerprint == "f00d"
    with pytest.raises(HetdiffError, match="no router checkpoint at") as err:
        load_router(tmp_path / "elsewhere")
    assert "\n" not in str(err.value)
    other = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"a": torch.zeros(2)}, str(other))
    with pytest.raises(HetdiffError, match="is not a hetdiff router checkpoint"):
        load_router(other)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(HetdiffError, match="unreadable"):
        load_router(tmp_path / "broken.safetensors")


def test_checkpoint_file_layout_is_safetensors_with_the_spec_as_metadata(tmp_path):
    """The on-disk format older checkpoints use: weights as named tensors, metadata keys
    ``format`` and ``router_spec``. A file written by hand in that layout carries no digest: it
    is refused in one line, and loads when unsigned files are trusted explicitly."""
    config = RouterConfig(2, 8, 1)
    router = Router(config)
    spec = RouterSpec.for_config(config, "beef", steps=1)
    path = tmp_path / "hand.safetensors"
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in router.state_dict().items()},
        str(path),
        metadata={"format": "hetdiff-router/1", "router_spec": spec.to_json()},
    )
    assert (ROUTER_FILENAME, ROUTER_FORMAT) == ("router.safetensors", "hetdiff-router/1")
    assert router_file(tmp_path) == tmp_path / ROUTER_FILENAME and router_file(path) == path
    with pytest.raises(HetdiffError, match="carries no digest.*--trust-unsigned") as refused:
        load_router(path)
    assert "\n" not in str(refused.value)
    loaded, loaded_spec = load_router(path, trust_unsigned=True)
    assert loaded_spec == spec
    for name, tensor in router.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    state = router.state_dict()
    state.pop("head.bias")
    save_router(tmp_path / "short.safetensors", state, spec)
    with pytest.raises(HetdiffError, match="router weights do not match its spec"):
        load_router(tmp_path / "short.safetensors")


def test_text_router_spec_round_trips_with_its_encoder():
    config = RouterConfig(4, 8, 1, context_dim=32)
    spec = RouterSpec.for_config(config, "abc123", text_encoder="hash", steps=3)
    assert (spec.conditioning, spec.text_encoder) == ("text", "hash")
    assert RouterSpec.from_json(spec.to_json()) == spec
    class_spec = RouterSpec.for_config(RouterConfig(4, 8, 1, num_classes=3), "abc123")
    assert class_spec.text_encoder is None
    with pytest.raises(HetdiffError, match="names text encoder 'hash' but its conditioning is"):
        RouterSpec.for_config(RouterConfig(4, 8, 1, num_classes=3), "abc123", text_encoder="hash")
