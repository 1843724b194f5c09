"""Router training: cross-entropy against the cluster of x0 on the flow path (design.md 3).

    x0 ~ data, k = cluster of x0 (partition manifest), t ~ U(0, 1), eps ~ N(0, I)
    x_t = (1 - t) x0 + t eps,   loss = -log softmax(router(x_t, t, cond))_k

The minimizer is the Bayes router p(k | x_t, t, cond). The loop carries two target columns per
image: its cluster id and its condition id (class label, caption id for a text router, -1 for
none); conditions are dropped to the null condition with probability ``label_dropout``, as the
experts drop theirs, so the router also knows p(k | x_t, t) for the unconditional half of
guidance. A text router sees each image's caption (``hetdiff.training.captions``) embedded by
the experts' text encoder. The training policy (warm-up, checkpoint interval, seed, width) comes
from ``hetdiff.config.RouterSettings``, the same for ``train-router`` and ``hetdiff run``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hetdiff.conditioning import Conditioning, drop_labels
from hetdiff.config import RouterSettings
from hetdiff.data.datasets import ImageDataset
from hetdiff.data.partition import Partition
from hetdiff.errors import HetdiffError
from hetdiff.experts.router_store import ROUTER_ARCHS, ROUTER_FILENAME, RouterSpec, save_router
from hetdiff.io import atomic_write_json
from hetdiff.models.router import RouterConfig
from hetdiff.models.router_transformer import TransformerRouterConfig, transformer_router_config
from hetdiff.models.text import CaptionBank
from hetdiff.objectives.paths import flow_interpolate
from hetdiff.training.captions import dataset_caption_bank
from hetdiff.training.loop import STATE_DIRNAME, LossFn, TrainConfig, train
from hetdiff.training.state import read_manifest

CONFIG_NAME = "router_config.json"  # the resolved router settings, checked on resume
DEFAULT_SETTINGS = RouterSettings()  # frozen: safe as a shared default


def router_targets(
    clusters: Tensor, conditions: Tensor | None, num_clusters: int
) -> tuple[Tensor, Tensor]:
    """The loop's two target columns: (cluster ids (N,) in [0, K), condition ids (N,)).

    ``conditions``: class labels or caption ids, or None (an unconditional router): then a
    column of -1 (the null condition). Both int64.
    """
    clusters = torch.as_tensor(clusters, dtype=torch.int64)
    if clusters.numel() and (clusters.min() < 0 or clusters.max() >= num_clusters):
        raise HetdiffError(
            f"cluster ids must be in [0, {num_clusters}); got max {int(clusters.max())}"
        )
    if conditions is None:
        return clusters, torch.full_like(clusters, -1)
    return clusters, torch.as_tensor(conditions, dtype=torch.int64)


def flow_path_batch(x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """t ~ U(0, 1) (B,), then eps ~ N(0, I); returns (x_t = flow_interpolate(x0, eps, t), t).

    All randomness from ``generator``, drawn in that order (t, then eps)."""
    t = torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return flow_interpolate(x0, eps, t), t


def router_loss_fn(
    num_classes: int = 0, label_dropout: float = 0.1, bank: CaptionBank | None = None
) -> LossFn:
    """``loss_fn(router, x0, (clusters, conditions), generator) -> (B,)`` cross-entropy against
    the cluster of x0 at a random point of the flow path.

    A class-conditional router (``num_classes`` > 0) sees each condition (a class label)
    replaced by the null class with probability ``label_dropout``. With a caption ``bank`` the
    conditions are caption ids: each becomes its caption's embedding, or the null context with
    probability ``label_dropout``. Otherwise the conditions are ignored. Random draws, all from
    ``generator``: t (B,), eps (B, C, H, W), then the dropout coin flips (B,).
    """
    if not 0.0 <= label_dropout <= 1.0:
        raise HetdiffError(f"label_dropout must be in [0, 1], got {label_dropout}")
    if bank is not None and num_classes:
        raise HetdiffError("a router conditions on class labels or on captions, not both")

    def loss_fn(model: nn.Module, x0: Tensor, targets: Any, generator: torch.Generator) -> Tensor:
        if not isinstance(targets, tuple) or len(targets) != 2:
            raise HetdiffError(
                "router training needs two target columns (cluster ids, condition ids); "
                "use train_router"
            )
        clusters, conditions = targets
        x_t, t = flow_path_batch(x0, generator)
        cond: Conditioning | Tensor | None = None
        if bank is not None:
            cond = bank.conditioning(drop_labels(conditions, label_dropout, generator))
        elif num_classes:
            cond = drop_labels(conditions, label_dropout, generator)
        return F.cross_entropy(model(x_t, t, cond).float(), clusters, reduction="none")

    return loss_fn


def router_network_config(
    settings: RouterSettings,
    num_clusters: int,
    resolution: int,
    channels: int,
    num_classes: int = 0,
    context_dim: int | None = None,
) -> RouterConfig | TransformerRouterConfig:
    """The network ``settings.arch`` names for K clusters of (channels, resolution) images:
    the FiLM conv router of width ``settings.hidden``, or the transformer router of the named
    size ``settings.size`` (``models.router_transformer.TRANSFORMER_ROUTER_CONFIGS``)."""
    shape = {"num_classes": num_classes, "context_dim": context_dim}
    if settings.arch == "transformer":
        return transformer_router_config(
            settings.size, num_clusters=num_clusters, resolution=resolution, channels=channels,
            **shape,
        )  # fmt: skip
    return RouterConfig(num_clusters, resolution, channels, hidden=settings.hidden, **shape)


def train_router(
    dataset: ImageDataset,
    partition: Partition,
    out_dir: str | Path,
    settings: RouterSettings = DEFAULT_SETTINGS,
    *,
    class_conditional: bool = True,
    text_encoder: str | None = None,
    caption_seed: int = 0,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    allow_lr_change: bool = False,
    state_url: str | None = None,
) -> Path:
    """Train a router on ``dataset`` against ``partition``'s clusters; return its checkpoint.

    The network is ``router_network_config(settings, K, resolution, channels, ...)`` (the
    FiLM conv router, or the transformer router with ``settings.arch = "transformer"``),
    conditioned on class labels when ``class_conditional`` and the data has classes, or on
    captions when ``text_encoder`` ("hash", "minilm" or a folder, the experts' encoder) is
    given (then ``context_dim`` = the encoder's token width, and class labels are not used):
    each image's caption (``dataset_captions(dataset, caption_seed)``) is embedded once into a
    caption bank under ``cache_dir``. Its initial weights depend on ``settings.seed`` alone.

    Runs ``hetdiff.training.loop.train`` with ``settings``' batch, lr, warm-up
    (``resolved_warmup_steps``), checkpoint interval (``resolved_checkpoint_every``) and seed;
    at every checkpoint the EMA weights are written atomically to ``out_dir/router.safetensors``
    with a ``RouterSpec`` (K, partition fingerprint, data, conditioning, steps). ``resume``
    continues ``out_dir/train_state`` and refuses other router settings or another partition
    (``allow_lr_change``: except another lr, e.g. after a divergence). ``state_url`` mirrors
    each committed training state to a store (``training.state_mirror``).
    """
    partition.check_dataset(dataset)
    bank = caption_ids = None
    if text_encoder is not None:
        bank, caption_ids = dataset_caption_bank(dataset, text_encoder, caption_seed, cache_dir)
    config = router_network_config(
        settings,
        partition.k,
        dataset.resolution,
        dataset.channels,
        num_classes=dataset.num_classes if class_conditional and bank is None else 0,
        context_dim=None if bank is None else bank.dim,
    )
    out_dir = Path(out_dir)
    config_path = out_dir / CONFIG_NAME
    if not resume and read_manifest(out_dir / STATE_DIRNAME) is not None:
        raise HetdiffError(
            f"{out_dir} already holds router training state; pass --resume to continue it or "
            "choose a new output directory"
        )
    resolved: dict[str, Any] = {
        "router": config.to_dict(),
        **({"arch": settings.arch} if settings.arch != "film" else {}),  # film: as before
        "label_dropout": settings.label_dropout,
        "partition": partition.fingerprint,
    }
    if bank is not None:
        resolved.update(text_encoder=text_encoder, caption_seed=caption_seed)
    if resume and config_path.is_file() and json.loads(config_path.read_text()) != resolved:
        raise HetdiffError(
            f"cannot resume: the router config or partition differs from {config_path}; "
            "pass the same settings or start a new run"
        )
    clusters = torch.from_numpy(partition.cluster_of(dataset.ids)).long()
    conditions = dataset.labels if config.num_classes else caption_ids  # caption ids: text
    targets = router_targets(clusters, conditions, partition.k)
    print(json.dumps(resolved, sort_keys=True))
    atomic_write_json(config_path, resolved)

    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed alone
        torch.manual_seed(settings.seed)
        router = ROUTER_ARCHS[settings.arch][1](config)  # Router | TransformerRouter
    target = out_dir / ROUTER_FILENAME

    def on_checkpoint(ema_state: dict[str, Tensor], step: int) -> None:
        spec = RouterSpec.for_config(
            config,
            partition.fingerprint,
            data_fingerprint=str(dataset.fingerprint),
            data_spec=str(dataset.spec),
            steps=step,
            text_encoder=text_encoder,
        )
        save_router(target, ema_state, spec)

    train_config = TrainConfig(
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=settings.resolved_warmup_steps,
        checkpoint_every=settings.resolved_checkpoint_every,
        seed=settings.seed,
        progress=settings.progress,
    )
    loss_fn = router_loss_fn(config.num_classes, settings.label_dropout, bank)
    train(router, dataset.images, targets, loss_fn, train_config, out_dir, on_checkpoint, resume,
          allow_lr_change=allow_lr_change, state_url=state_url)  # fmt: skip
    return target
