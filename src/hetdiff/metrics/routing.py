"""Router quality per noise level: how well r(k | x_t, t, cond) names the cluster of x0.

For a seeded subset of the data, x0 is noised on the flow path x_t = (1 - t) x0 + t eps at t
drawn uniformly inside each of ``buckets`` equal t-intervals; per bucket: top-1 accuracy of the
router's logits against the partition's cluster of x0, mean entropy of its softmax (nats), and
the accuracy of always answering the largest cluster (what a router that ignores x_t achieves).
A Bayes router is near 1 at t -> 0 and falls to the prior (or p(k | cond)) as t -> 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from hetdiff.data.datasets import ImageDataset
from hetdiff.data.partition import Partition
from hetdiff.errors import HetdiffError
from hetdiff.models.router import Router
from hetdiff.objectives.paths import flow_interpolate
from hetdiff.training.captions import dataset_caption_bank


class RouterAccuracy(NamedTuple):
    """Router quality in one t-bucket: top-1 accuracy, mean entropy (nats), and the accuracy of
    always answering the largest cluster (what a router that ignores x_t achieves)."""

    t_lo: float
    t_hi: float
    accuracy: float
    entropy: float
    prior_accuracy: float


@torch.no_grad()
def router_accuracy_by_t(
    router: Router | nn.Module,
    dataset: ImageDataset,
    partition: Partition,
    buckets: int = 10,
    n: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
    text_encoder: str | None = None,
    caption_seed: int = 0,
    cache_dir: str | Path | None = None,
) -> list[RouterAccuracy]:
    """Accuracy of ``router`` at predicting the cluster of x0 from x_t, per t-bucket.

    ``n`` samples (a seeded random subset) are noised at t ~ U(bucket) on the flow path; a
    class-conditional router gets their labels, a text router (which needs ``text_encoder``, the
    one in its spec) their captions.
    """
    partition.check_dataset(dataset)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(dataset), generator=generator)[: min(n, len(dataset))]
    x0, labels = dataset.images[rows], dataset.labels[rows]
    clusters = torch.from_numpy(partition.cluster_of(dataset.ids[rows])).long()
    prior_accuracy = float(
        (clusters == int(torch.tensor(partition.sizes).argmax())).double().mean()
    )
    router_config = getattr(router, "config", None)
    conditional = bool(getattr(router_config, "num_classes", 0))
    bank = None
    if getattr(router_config, "context_dim", None) is not None:
        if text_encoder is None:
            raise HetdiffError(
                "this router is conditioned on text; pass the text_encoder of its spec to "
                "measure it with the images' captions"
            )
        bank, caption_ids = dataset_caption_bank(dataset, text_encoder, caption_seed, cache_dir)
        labels = caption_ids[rows]
    device = next(router.parameters()).device
    was_training = router.training
    router.eval()
    results = []
    for b in range(buckets):
        lo, hi = b / buckets, (b + 1) / buckets
        correct, entropy = 0.0, 0.0
        for start in range(0, len(rows), batch_size):
            x = x0[start : start + batch_size]
            t = lo + (hi - lo) * torch.rand(x.shape[0], generator=generator)
            eps = torch.randn(x.shape, generator=generator)
            x_t = flow_interpolate(x, eps, t)
            cond = None
            if bank is not None:
                cond = bank.conditioning(labels[start : start + batch_size]).to(device)
            elif conditional:
                cond = labels[start : start + batch_size].to(device)
            logits = router(x_t.to(device), t.to(device), cond).float().cpu()
            log_p = torch.log_softmax(logits, dim=1)
            correct += float((logits.argmax(1) == clusters[start : start + batch_size]).sum())
            entropy += float(-(log_p.exp() * log_p).sum(1).sum())
        results.append(
            RouterAccuracy(lo, hi, correct / len(rows), entropy / len(rows), prior_accuracy)
        )
    router.train(was_training)
    return results
