"""``hetdiff train-router`` as one library call: load the data and the partition, train the
router (``hetdiff.training.router``), and print its accuracy per t-bucket
(``hetdiff.metrics.routing``)."""

from __future__ import annotations

from pathlib import Path

from hetdiff.config import RouterSettings
from hetdiff.data.datasets import load_dataset
from hetdiff.data.partition import Partition
from hetdiff.errors import HetdiffError
from hetdiff.experts.router_store import load_router
from hetdiff.metrics.routing import router_accuracy_by_t
from hetdiff.training.router import train_router


def train_router_command(
    data: str,
    resolution: int | None,
    partition_path: str | Path,
    out: str | Path,
    settings: RouterSettings,
    class_conditional: bool = True,
    text_encoder: str | None = None,
    resume: bool = False,
    allow_lr_change: bool = False,
) -> Path:
    """Train a router on the data set ``data`` (at ``resolution``, None = native) against the
    partition manifest at ``partition_path``; write ``out/router.safetensors``, print its path
    and the router's accuracy per t-bucket (10 buckets, 1000 images, seed ``settings.seed``).

    ``text_encoder`` trains a text router on the images' captions; it excludes
    ``class_conditional=False`` (a one-line error before any data is read). Returns the path.
    """
    if text_encoder is not None and not class_conditional:
        raise HetdiffError("--text-encoder and --unconditional exclude each other; give one")
    dataset = load_dataset(data, resolution=resolution)
    partition = Partition.load(str(partition_path))
    path = train_router(
        dataset,
        partition,
        out,
        settings,
        class_conditional=class_conditional,
        text_encoder=text_encoder,
        resume=resume,
        allow_lr_change=allow_lr_change,
    )
    print(f"wrote {path}")
    router, _ = load_router(path)
    print("router accuracy per t bucket (prior = always the largest cluster):")
    table = router_accuracy_by_t(
        router, dataset, partition, buckets=10, n=1000, seed=settings.seed,
        text_encoder=text_encoder,
    )  # fmt: skip
    for row in table:
        print(
            f"  t in [{row.t_lo:.1f}, {row.t_hi:.1f}]: accuracy {row.accuracy:.3f} "
            f"(prior {row.prior_accuracy:.3f}), entropy {row.entropy:.3f}"
        )
    return path
