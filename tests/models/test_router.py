"""The router: shapes and conditioning, checkpoints that reopen, training that learns the
clusters (and uses class labels when they decide the cluster), bitwise resume."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import safetensors.torch
import torch

from hetdiff.data.datasets import ImageDataset
from hetdiff.data.partition import Partition
from hetdiff.errors import HetdiffError
from hetdiff.models.conditioning import Conditioning
from hetdiff.models.router import (
    Router,
    RouterConfig,
    RouterSpec,
    decode_router_targets,
    encode_router_targets,
    load_router,
    read_router_spec,
    router_accuracy_by_t,
    router_loss_fn,
    save_router,
    train_router,
)
from hetdiff.training.loop import TrainConfig

# ----------------------------------------------------------------------------- synthetic data


def make_dataset(images: torch.Tensor, labels: torch.Tensor, name: str) -> ImageDataset:
    n = images.shape[0]
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    return ImageDataset(
        images=images,
        labels=labels,
        ids=torch.arange(1000, 1000 + n),
        sources=torch.zeros(n, dtype=torch.long),
        class_names=tuple(f"{name}/c{i}" for i in range(int(labels.max()) + 1)),
        source_names=(name,),
        spec=name,
        fingerprint=digest,
    )


def make_partition(dataset: ImageDataset, clusters: np.ndarray, k: int, seed: int = 0) -> Partition:
    return Partition(
        data_spec=dataset.spec,
        data_fingerprint=dataset.fingerprint,
        encoder="test",
        k=k,
        fine=k,
        seed=seed,
        balanced=False,
        fine_centroids=np.zeros((k, 0), np.float32),
        coarse_centroids=np.zeros((k, 0), np.float32),
        fine_to_coarse=np.arange(k, dtype=np.int64),
        ids=dataset.ids.numpy().copy(),
        clusters=clusters.astype(np.int64),
        sizes=tuple(np.bincount(clusters, minlength=k).tolist()),
    )


@pytest.fixture(scope="module")
def quadrants() -> tuple[ImageDataset, Partition]:
    """8x8 images: cluster k lights quadrant k (+ small noise); class labels are unrelated.
    Cluster sizes 40/25/20/15 %, so the prior alone gets 40 %."""
    gen = torch.Generator().manual_seed(0)
    n = 400
    clusters = np.repeat(np.arange(4), [160, 100, 80, 60])
    images = torch.full((n, 1, 8, 8), -0.8)
    for i, k in enumerate(clusters):
        r, c = divmod(int(k), 2)
        images[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 0.8
    images += 0.05 * torch.randn(images.shape, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    dataset = make_dataset(images, labels, "quadrants")
    return dataset, make_partition(dataset, clusters, 4)


def small_train(steps: int, **kwargs) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=32, lr=3e-3, warmup_steps=10, ema_decay=0.9, progress=False,
        log_every=5, **kwargs,
    )  # fmt: skip


# ----------------------------------------------------------------------------- the network


def test_router_shapes_and_null_conditions():
    torch.manual_seed(0)
    router = Router(RouterConfig(3, 28, 1, num_classes=5, context_dim=6))
    for p in router.parameters():  # zero-initialized heads would hide every input
        p.data.normal_(0, 0.3)
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    labels = torch.tensor([0, 4, -1, 2])
    context, mask = torch.randn(4, 3, 6), torch.tensor([[1, 1, 0]] * 3 + [[0, 0, 0]]).bool()
    logits = router(x, t, Conditioning(labels, context, mask))
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    # -1 is the null class, the same as giving no labels; an all-False mask is the null text
    null = router(
        x,
        t,
        Conditioning(
            torch.full((4,), -1), torch.zeros(4, 3, 6), torch.zeros(4, 3, dtype=torch.bool)
        ),
    )
    assert torch.allclose(null, router(x, t, None), atol=1e-6)
    assert torch.allclose(logits[3], router(x[3:], t[3:], Conditioning(labels[3:]))[0], atol=1e-6)
    # labels, time and image all change the answer
    assert not torch.allclose(logits, router(x, t, Conditioning(labels.flip(0), context, mask)))
    assert not torch.allclose(router(x, t), router(x, 1 - t))
    assert not torch.allclose(router(x, t), router(-x, t))
    assert router(x, 0.5).shape == (4, 3)  # scalar t
    plain = Router(RouterConfig(3, 28, 1))  # an unconditional router ignores conditions
    assert torch.equal(plain(x, t, Conditioning(labels, context, mask)), plain(x, t))
    with pytest.raises(HetdiffError, match=r"router expects x of shape \(B, 1, 28, 28\)") as err:
        router(torch.randn(2, 3, 28, 28), torch.rand(2))
    assert "\n" not in str(err.value)
    with pytest.raises(HetdiffError, match="router class labels must be in"):
        router(x, t, Conditioning(torch.tensor([0, 5, 1, 1])))


def test_router_is_much_smaller_than_an_expert():
    from hetdiff.models.dit import build_dit

    router = Router(RouterConfig(8, 28, 1))
    n_router = sum(p.numel() for p in router.parameters())
    n_expert = sum(p.numel() for p in build_dit("tiny").parameters())
    assert n_router < 0.3 * n_expert, (n_router, n_expert)


def test_config_validation_is_one_line():
    for kwargs, message in [
        (dict(num_clusters=1), "num_clusters >= 2"),
        (dict(hidden=12), "multiple of 8"),
        (dict(depth=0), "depth must be a positive integer"),
    ]:
        with pytest.raises(HetdiffError, match=message) as err:
            RouterConfig(**{"num_clusters": 4, "resolution": 28, "channels": 1, **kwargs})
        assert "\n" not in str(err.value)
    with pytest.raises(HetdiffError, match="unknown RouterConfig keys"):
        RouterConfig.from_dict({"num_clusters": 4, "resolution": 28, "channels": 1, "width": 3})


# ----------------------------------------------------------------------------- targets and loss


def test_targets_pack_cluster_and_label_in_one_column():
    clusters = torch.tensor([0, 3, 2, 1, 3])
    labels = torch.tensor([-1, 0, 9, 4, 2])
    codes = encode_router_targets(clusters, labels, 4)
    assert codes.dtype == torch.int64 and codes.shape == (5,)
    back_clusters, back_labels = decode_router_targets(codes, 4)
    assert torch.equal(back_clusters, clusters) and torch.equal(back_labels, labels)
    assert torch.equal(
        decode_router_targets(encode_router_targets(clusters, None, 4), 4)[1], torch.full((5,), -1)
    )
    with pytest.raises(HetdiffError, match=r"cluster ids must be in \[0, 3\)"):
        encode_router_targets(clusters, None, 3)


def test_loss_is_per_sample_cross_entropy_on_the_flow_path():
    router = Router(RouterConfig(4, 8, 1, num_classes=3))
    x0 = torch.randn(6, 1, 8, 8)
    codes = encode_router_targets(
        torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([0, 1, 2, 0, 1, 2]), 4
    )
    loss_fn = router_loss_fn(4, num_classes=3, label_dropout=0.5)
    a = loss_fn(router, x0, codes, torch.Generator().manual_seed(1))
    b = loss_fn(router, x0, codes, torch.Generator().manual_seed(1))
    assert a.shape == (6,) and torch.equal(a, b)  # all randomness from the generator
    # an untrained router (zero heads) is uniform: cross-entropy log K for every row
    assert torch.allclose(a, torch.full((6,), float(np.log(4))), atol=1e-6)


# ----------------------------------------------------------------------------- checkpoints


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


# ----------------------------------------------------------------------------- training


def test_trained_router_finds_the_clusters(quadrants, tmp_path):
    dataset, partition = quadrants
    path = train_router(dataset, partition, 80, tmp_path, train_config=small_train(80))
    router, spec = load_router(path)
    assert (spec.steps, spec.num_clusters, spec.partition_fingerprint) == (
        80,
        4,
        partition.fingerprint,
    )
    assert (spec.data_fingerprint, spec.conditioning) == (dataset.fingerprint, "none")
    table = router_accuracy_by_t(router, dataset, partition, buckets=5, n=400, seed=1)
    assert [round(row.t_lo, 2) for row in table] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert table[0].prior_accuracy == pytest.approx(0.4)
    assert table[0].accuracy >= 0.97  # x_t at low noise shows its quadrant
    assert table[0].accuracy > table[0].prior_accuracy + 0.5
    assert table[-1].accuracy < table[0].accuracy  # noise erases the evidence
    assert table[0].entropy < table[-1].entropy


def test_class_conditional_router_reads_the_labels(tmp_path):
    """Images are pure noise; the cluster is decided by the class label alone. Only a
    class-conditional router can beat the prior, and it must do so even at t ~ 1."""
    gen = torch.Generator().manual_seed(1)
    n = 256
    labels = torch.randint(0, 4, (n,), generator=gen)
    dataset = make_dataset(torch.randn(n, 1, 8, 8, generator=gen).clamp(-1, 1), labels, "noise")
    clusters = (labels.numpy() // 2).astype(np.int64)
    partition = make_partition(dataset, clusters, 2)
    config = RouterConfig(2, 8, 1, num_classes=4)
    path = train_router(
        dataset, partition, 60, tmp_path / "cond", config, small_train(60), label_dropout=0.1
    )
    router, spec = load_router(path)
    assert spec.conditioning == "class" and spec.num_classes == 4
    table = router_accuracy_by_t(router, dataset, partition, buckets=2, n=256)
    assert min(row.accuracy for row in table) >= 0.95
    prior = table[0].prior_accuracy
    assert prior < 0.6
    uncond = load_router(
        train_router(dataset, partition, 60, tmp_path / "unc", train_config=small_train(60))
    )[0]
    assert (
        max(
            row.accuracy
            for row in router_accuracy_by_t(uncond, dataset, partition, buckets=2, n=256)
        )
        <= prior + 0.1
    )


def test_resume_continues_bitwise_and_refuses_another_partition(quadrants, tmp_path):
    dataset, partition = quadrants
    full = load_router(
        train_router(
            dataset,
            partition,
            8,
            tmp_path / "full",
            train_config=small_train(8, checkpoint_every=4),
        )
    )
    train_router(
        dataset, partition, 4, tmp_path / "split", train_config=small_train(4, checkpoint_every=4)
    )
    resumed_path = train_router(
        dataset,
        partition,
        8,
        tmp_path / "split",
        train_config=small_train(8, checkpoint_every=4),
        resume=True,
    )
    resumed = load_router(resumed_path)
    assert resumed[1].steps == 8
    for name, tensor in full[0].state_dict().items():
        assert torch.equal(tensor, resumed[0].state_dict()[name]), name
    one_line = "already holds router training state; pass --resume"
    with pytest.raises(HetdiffError, match=one_line):
        train_router(dataset, partition, 8, tmp_path / "split", train_config=small_train(8))
    assert load_router(resumed_path)[1].steps == 8  # the refused run left the checkpoint alone
    shuffled = make_partition(dataset, np.roll(partition.clusters, 1), 4, seed=5)
    with pytest.raises(HetdiffError, match="cannot resume") as err:
        train_router(
            dataset, shuffled, 12, tmp_path / "split", train_config=small_train(12), resume=True
        )
    assert "\n" not in str(err.value)


def test_train_router_refuses_mismatched_inputs(quadrants, tmp_path):
    dataset, partition = quadrants
    other = make_dataset(dataset.images + 0.01, dataset.labels, "other")
    with pytest.raises(HetdiffError, match="re-run `hetdiff cluster`"):
        train_router(other, partition, 2, tmp_path)
    with pytest.raises(HetdiffError, match="does not fit partition K=4"):
        train_router(dataset, partition, 2, tmp_path, RouterConfig(3, 8, 1))


# ----------------------------------------------------------------------------- text routers


def test_text_router_spec_round_trips_with_its_encoder():
    config = RouterConfig(4, 8, 1, context_dim=32)
    spec = RouterSpec.for_config(config, "abc123", text_encoder="hash", steps=3)
    assert (spec.conditioning, spec.text_encoder) == ("text", "hash")
    assert RouterSpec.from_json(spec.to_json()) == spec
    class_spec = RouterSpec.for_config(RouterConfig(4, 8, 1, num_classes=3), "abc123")
    assert class_spec.text_encoder is None
    with pytest.raises(HetdiffError, match="names text encoder 'hash' but its conditioning is"):
        RouterSpec.for_config(RouterConfig(4, 8, 1, num_classes=3), "abc123", text_encoder="hash")


def test_text_router_reads_the_captions(tmp_path):
    """Pure-noise images whose cluster is decided by the class named in the caption: a router
    trained on captions beats the cluster prior at every t, and its loss falls."""
    gen = torch.Generator().manual_seed(2)
    n = 256
    labels = torch.randint(0, 4, (n,), generator=gen)
    dataset = make_dataset(torch.randn(n, 1, 8, 8, generator=gen).clamp(-1, 1), labels, "noise")
    partition = make_partition(dataset, (labels.numpy() // 2).astype(np.int64), 2)
    train = small_train(120, checkpoint_every=60)
    path = train_router(
        dataset, partition, 120, tmp_path / "text", train_config=train, text_encoder="hash",
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    router, spec = load_router(path)
    assert (spec.conditioning, spec.text_encoder, spec.steps) == ("text", "hash", 120)
    assert spec.config.context_dim == 32 and spec.num_classes == 0
    table = router_accuracy_by_t(
        router, dataset, partition, buckets=2, n=256, text_encoder="hash",
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    prior = table[0].prior_accuracy
    assert prior < 0.6 and min(row.accuracy for row in table) >= prior + 0.3, table
    losses = [json.loads(line)["loss"] for line in (tmp_path / "text" / "log.jsonl").open()]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    with pytest.raises(HetdiffError, match="pass the text_encoder of its spec"):
        router_accuracy_by_t(router, dataset, partition, buckets=2, n=16)
    # resume refuses another encoder's settings; a text config without an encoder is refused
    with pytest.raises(HetdiffError, match="cannot resume"):
        train_router(
            dataset, partition, 160, tmp_path / "text", train_config=small_train(160), resume=True,
            text_encoder="hash", caption_seed=1, cache_dir=tmp_path / "cache",
        )  # fmt: skip
    with pytest.raises(HetdiffError, match="no text encoder was given"):
        train_router(dataset, partition, 2, tmp_path / "x", RouterConfig(2, 8, 1, context_dim=32))
    with pytest.raises(HetdiffError, match="needs context_dim=32 and no classes"):
        train_router(
            dataset, partition, 2, tmp_path / "y", RouterConfig(2, 8, 1, context_dim=8),
            text_encoder="hash", cache_dir=tmp_path / "cache",
        )  # fmt: skip
