"""Router training: two target columns (cluster, condition), the loss and its random draws,
training that learns the clusters (and uses class labels or captions when they decide the
cluster), the one training policy of RouterSettings, bitwise resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hetdiff.conditioning import drop_labels
from hetdiff.config import RouterSettings
from hetdiff.errors import HetdiffError
from hetdiff.experts.router_store import load_router
from hetdiff.metrics.routing import router_accuracy_by_t
from hetdiff.models.router import Router, RouterConfig
from hetdiff.objectives.paths import flow_interpolate
from hetdiff.training.router import router_loss_fn, router_targets, train_router
from router_data import label_decided_data, make_dataset, make_partition, quadrant_data


@pytest.fixture(scope="module")
def quadrants():
    return quadrant_data()


def small(steps: int, **kwargs) -> RouterSettings:
    values = dict(steps=steps, batch_size=32, lr=3e-3, warmup_steps=10, progress=False)
    return RouterSettings(**{**values, **kwargs})


# ----------------------------------------------------------------------------- targets and loss


def test_targets_are_two_int64_columns():
    clusters = torch.tensor([0, 3, 2, 1, 3])
    labels = torch.tensor([-1, 0, 9, 4, 2])
    back_clusters, back_labels = router_targets(clusters, labels, 4)
    assert back_clusters.dtype == back_labels.dtype == torch.int64
    assert back_clusters.shape == back_labels.shape == (5,)
    assert torch.equal(back_clusters, clusters) and torch.equal(back_labels, labels)
    assert torch.equal(router_targets(clusters, None, 4)[1], torch.full((5,), -1))
    with pytest.raises(HetdiffError, match=r"cluster ids must be in \[0, 3\)"):
        router_targets(clusters, None, 3)


def test_loss_is_per_sample_cross_entropy_on_the_flow_path():
    router = Router(RouterConfig(4, 8, 1, num_classes=3))
    x0 = torch.randn(6, 1, 8, 8)
    targets = router_targets(torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([0, 1, 2, 0, 1, 2]), 4)
    loss_fn = router_loss_fn(num_classes=3, label_dropout=0.5)
    a = loss_fn(router, x0, targets, torch.Generator().manual_seed(1))
    b = loss_fn(router, x0, targets, torch.Generator().manual_seed(1))
    assert a.shape == (6,) and torch.equal(a, b)  # all randomness from the generator
    # an untrained router (zero heads) is uniform: cross-entropy log K for every row
    assert torch.allclose(a, torch.full((6,), float(np.log(4))), atol=1e-6)
    with pytest.raises(HetdiffError, match="needs two target columns"):
        loss_fn(router, x0, targets[0], torch.Generator())


def test_loss_draws_t_then_eps_then_the_dropout_coins():
    """The random stream of router training: t (B,), eps (B, C, H, W), then the label dropout
    flips, all from the loop's generator (the order the packed-code trainer drew them in)."""
    torch.manual_seed(0)
    router = Router(RouterConfig(4, 8, 1, num_classes=3))
    for p in router.parameters():
        p.data.normal_(0, 0.3)
    x0 = torch.randn(6, 1, 8, 8)
    clusters, labels = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = router_loss_fn(3, 0.5)(router, x0, (clusters, labels), torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    t = torch.rand(6, generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    dropped = drop_labels(labels, 0.5, gen)
    expected = F.cross_entropy(
        router(flow_interpolate(x0, eps, t), t, dropped), clusters, reduction="none"
    )
    assert torch.equal(loss, expected)
    # an unconditional router draws t and eps only: its conditions column is ignored
    gen = torch.Generator().manual_seed(5)
    router_loss_fn()(Router(RouterConfig(4, 8, 1)), x0, (clusters, torch.full((6,), -1)), gen)
    ref = torch.Generator().manual_seed(5)
    torch.rand(6, generator=ref), torch.randn(x0.shape, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())


# ----------------------------------------------------------------------------- training


def test_trained_router_finds_the_clusters(quadrants, tmp_path):
    dataset, partition = quadrants
    settings = small(80)
    path = train_router(dataset, partition, tmp_path, settings, class_conditional=False)
    router, spec = load_router(path)
    assert (spec.steps, spec.num_clusters, spec.partition_fingerprint) == (
        80,
        4,
        partition.fingerprint,
    )
    assert (spec.data_fingerprint, spec.conditioning) == (dataset.fingerprint, "none")
    assert spec.model["hidden"] == settings.hidden == 32
    # the one policy: warm-up and checkpoint interval resolved by RouterSettings
    used = json.loads((tmp_path / "train_config.json").read_text())
    assert (used["warmup_steps"], used["checkpoint_every"], used["seed"]) == (10, 40, 0)
    assert (used["batch_size"], used["lr"], used["steps"]) == (32, 3e-3, 80)
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
    dataset, partition = label_decided_data(seed=1)
    path = train_router(dataset, partition, tmp_path / "cond", small(60, label_dropout=0.1))
    router, spec = load_router(path)
    assert spec.conditioning == "class" and spec.num_classes == 4
    table = router_accuracy_by_t(router, dataset, partition, buckets=2, n=256)
    assert min(row.accuracy for row in table) >= 0.95
    prior = table[0].prior_accuracy
    assert prior < 0.6
    uncond = load_router(
        train_router(dataset, partition, tmp_path / "unc", small(60), class_conditional=False)
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

    def settings(steps: int) -> RouterSettings:  # warm-up within the first leg: same schedule
        return small(steps, warmup_steps=4, checkpoint_every=4, hidden=16)

    full = load_router(train_router(dataset, partition, tmp_path / "full", settings(8)))
    train_router(dataset, partition, tmp_path / "split", settings(4))
    resumed_path = train_router(dataset, partition, tmp_path / "split", settings(8), resume=True)
    resumed = load_router(resumed_path)
    assert resumed[1].steps == 8 and resumed[1].model["hidden"] == 16  # settings.hidden
    for name, tensor in full[0].state_dict().items():
        assert torch.equal(tensor, resumed[0].state_dict()[name]), name
    one_line = "already holds router training state; pass --resume"
    with pytest.raises(HetdiffError, match=one_line):
        train_router(dataset, partition, tmp_path / "split", settings(8))
    assert load_router(resumed_path)[1].steps == 8  # the refused run left the checkpoint alone
    shuffled = make_partition(dataset, np.roll(partition.clusters, 1), 4, seed=5)
    with pytest.raises(HetdiffError, match="cannot resume") as err:
        train_router(dataset, shuffled, tmp_path / "split", settings(12), resume=True)
    assert "\n" not in str(err.value)


def test_train_router_refuses_data_of_another_partition(quadrants, tmp_path):
    dataset, partition = quadrants
    other = make_dataset(dataset.images + 0.01, dataset.labels, "other")
    with pytest.raises(HetdiffError, match="re-run `hetdiff cluster`"):
        train_router(other, partition, tmp_path, small(2))
    assert not (tmp_path / "router_config.json").exists()


# ----------------------------------------------------------------------------- text routers


def test_text_router_reads_the_captions(tmp_path):
    """Pure-noise images whose cluster is decided by the class named in the caption: a router
    trained on captions beats the cluster prior at every t, and its loss falls."""
    dataset, partition = label_decided_data(seed=2)
    cache = tmp_path / "cache"
    path = train_router(
        dataset, partition, tmp_path / "text", small(120, checkpoint_every=60),
        text_encoder="hash", cache_dir=cache,
    )  # fmt: skip
    router, spec = load_router(path)
    assert (spec.conditioning, spec.text_encoder, spec.steps) == ("text", "hash", 120)
    assert spec.config.context_dim == 32 and spec.num_classes == 0  # captions replace labels
    table = router_accuracy_by_t(
        router, dataset, partition, buckets=2, n=256, text_encoder="hash", cache_dir=cache
    )
    prior = table[0].prior_accuracy
    assert prior < 0.6 and min(row.accuracy for row in table) >= prior + 0.3, table
    losses = [json.loads(line)["loss"] for line in (tmp_path / "text" / "log.jsonl").open()]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    # resume refuses another caption seed (other captions, the same encoder)
    with pytest.raises(HetdiffError, match="cannot resume"):
        train_router(
            dataset, partition, tmp_path / "text", small(160), resume=True,
            text_encoder="hash", caption_seed=1, cache_dir=cache,
        )  # fmt: skip


# ----------------------------------------------------------------------------- transformer routers


def test_transformer_router_trains_and_round_trips(quadrants, tmp_path):
    """settings.arch = "transformer": the named-size TransformerRouter trains through the same
    loop, beats the prior by far at low noise, and its checkpoint loads back as itself."""
    from hetdiff.models.router_transformer import TransformerRouter, transformer_router_config

    dataset, partition = quadrants
    settings = small(60, arch="transformer", size="tiny")
    path = train_router(dataset, partition, tmp_path / "tr", settings, class_conditional=False)
    router, spec = load_router(path)
    expected = transformer_router_config("tiny", num_clusters=4, resolution=8, channels=1)
    assert isinstance(router, TransformerRouter) and spec.arch == "transformer"
    assert spec.config == expected and spec.steps == 60
    resolved = json.loads((tmp_path / "tr" / "router_config.json").read_text())
    assert resolved["arch"] == "transformer" and resolved["router"] == expected.to_dict()
    table = router_accuracy_by_t(router, dataset, partition, buckets=5, n=400, seed=1)
    print("transformer router accuracy by t:", [round(row.accuracy, 3) for row in table])
    assert table[0].accuracy >= 0.97 and table[0].prior_accuracy == pytest.approx(0.4)
    assert table[-1].accuracy < table[0].accuracy
    untrained = TransformerRouter(expected)  # zero heads: uniform, cross-entropy log K
    x0, clusters = dataset.images[:256], torch.from_numpy(partition.clusters[:256]).long()
    targets = router_targets(clusters, None, 4)
    with torch.no_grad():
        losses = [float(router_loss_fn()(net, x0, targets, torch.Generator().manual_seed(3))
                        .mean()) for net in (untrained, router)]  # fmt: skip
    print(f"cross-entropy on 256 images: untrained {losses[0]:.3f}, trained {losses[1]:.3f}")
    assert losses[0] == pytest.approx(float(np.log(4)), abs=1e-5) and losses[1] < 0.6 * losses[0]
    # film routers keep their resolved config exactly as before (no arch key): resume unchanged
    train_router(dataset, partition, tmp_path / "film", small(2), class_conditional=False)
    assert "arch" not in json.loads((tmp_path / "film" / "router_config.json").read_text())


def test_class_conditional_transformer_router_reads_the_labels(tmp_path):
    dataset, partition = label_decided_data(seed=1)
    settings = small(60, arch="transformer", size="tiny")
    router, spec = load_router(train_router(dataset, partition, tmp_path, settings))
    assert spec.conditioning == "class" and spec.config.num_classes == 4
    table = router_accuracy_by_t(router, dataset, partition, buckets=2, n=256)
    assert min(row.accuracy for row in table) >= 0.95 and table[0].prior_accuracy < 0.6


def test_router_arch_and_size_are_checked_settings():
    assert (RouterSettings().arch, RouterSettings().size) == ("film", "tiny")
    with pytest.raises(HetdiffError, match="RouterSettings.arch 'conv' is unknown; use one of"):
        RouterSettings(arch="conv")
    with pytest.raises(HetdiffError, match="RouterSettings.size 'huge' is unknown"):
        RouterSettings(size="huge")
