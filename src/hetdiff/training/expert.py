"""Train one expert in isolation: its own data shard, its own optimizer, its own checkpoint.

Glue only: data (an ImageDataset, optionally one cluster of a partition) + a DiT + the loss its
objective calls for (``objectives.losses.make_loss_fn``) + the generic training loop, writing
``out_dir/expert.safetensors`` (EMA weights, spec in the metadata) every checkpoint and at the
end. Nothing here talks to any other expert.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hetdiff.config import ExpertSettings
from hetdiff.errors import HetdiffError
from hetdiff.experts.build import build_expert_spec
from hetdiff.experts.store import save_expert
from hetdiff.models.checkpointing import enable_gradient_checkpointing
from hetdiff.models.dit import DiT, dit_config
from hetdiff.objectives.losses import LossFn, make_loss_fn
from hetdiff.objectives.schedules import make_schedule
from hetdiff.objectives.velocity import DEFAULT_TIME_SCALE, FlowVelocity
from hetdiff.training.loop import TrainConfig, train

EXPERT_FILE = "expert.safetensors"


def train_config_for(settings: Any, dataset_size: int) -> TrainConfig:
    """The loop's TrainConfig from expert-style settings (steps, batch_size, lr, warmup_steps,
    grad_clip, ema_decay, checkpoint_every, seed, mixed_precision, progress, and ``compile``
    where the settings have it); the batch is capped at the data size."""
    return TrainConfig(
        steps=settings.steps,
        batch_size=min(settings.batch_size, dataset_size),
        lr=settings.lr,
        warmup_steps=settings.warmup_steps,
        grad_clip=settings.grad_clip,
        ema_decay=settings.ema_decay,
        checkpoint_every=settings.checkpoint_every,
        seed=settings.seed,
        mixed_precision=settings.mixed_precision,
        progress=settings.progress,
        compile=getattr(settings, "compile", False),
    )


def build_expert_net(
    settings: ExpertSettings, dataset: Any, context_dim: int | None = None
) -> tuple[DiT, dict[str, Any]]:
    """A fresh DiT sized for the data, initialized from ``settings.seed`` alone (whatever ran
    before in the process); returns (net, model dict for the spec). ``context_dim`` (text
    experts) adds cross-attention plus the pooled-caption path and drops class conditioning."""
    conditional = settings.class_conditional and context_dim is None
    num_classes = dataset.num_classes if conditional else 0
    config = dit_config(
        settings.model,
        input_size=dataset.resolution,
        in_channels=dataset.channels,
        num_classes=num_classes,
        learned_sigma=settings.learned_variance,
        context_dim=context_dim,
        pooled_context=context_dim is not None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        net = DiT(config)
    return net, {"arch": "dit", "name": settings.model, **config.to_dict()}


def expert_loss_fn(settings: ExpertSettings) -> LossFn:
    """The training loop's ``loss_fn(net, x0, labels, generator) -> (B,)`` for ``settings``'
    objective (DDPM on its schedule, weighted by min-SNR-gamma when ``settings.min_snr_gamma``
    is set, or flow matching on a native flow net's velocity at timestep t * 1000)."""
    schedule = None if settings.schedule is None else make_schedule(settings.schedule)
    return make_loss_fn(
        settings.objective,
        settings.prediction,
        schedule,
        time_sampling=settings.time_sampling,
        label_dropout=settings.label_dropout,
        learned_variance=settings.learned_variance,
        wrap=lambda m: FlowVelocity(m, DEFAULT_TIME_SCALE),
        min_snr_gamma=settings.min_snr_gamma,
    )


def expert_net_and_loss(
    settings: ExpertSettings,
    dataset: Any,
    context_dim: int | None = None,
    caption_bank: Callable[[], Any] | None = None,
) -> tuple[nn.Module, dict[str, Any], LossFn]:
    """The expert's fresh network, its architecture dict and its loss, for in-memory and
    streamed data alike. ``settings.gradient_checkpointing`` checkpoints the network's blocks
    (same weights and state dict, less activation memory). A text expert (``context_dim``) gets
    ``caption_bank``, a function returning the bank that the current batch's caption ids index
    (fixed for in-memory data, rebuilt per batch for a stream); its loss embeds the ids first."""
    net, model_dict = build_expert_net(settings, dataset, context_dim)
    if settings.gradient_checkpointing:
        enable_gradient_checkpointing(net)
    loss_fn = expert_loss_fn(settings)
    if caption_bank is None:
        return net, model_dict, loss_fn
    from hetdiff.models.text import CaptionConditioned

    def caption_loss_fn(model, x0, caption_ids, generator):  # caption ids -> caption embeddings
        return loss_fn(CaptionConditioned(model, caption_bank()), x0, caption_ids, generator)

    return net, model_dict, caption_loss_fn


def train_expert(
    dataset: Any,
    settings: ExpertSettings,
    out_dir: str | Path,
    cluster_id: int | None = None,
    num_clusters: int | None = None,
    partition_fingerprint: str | None = None,
    resume: bool = False,
    init_state: dict[str, Tensor] | None = None,
    provenance: dict[str, Any] | None = None,
    autoencoder: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    allow_lr_change: bool = False,
    state_url: str | None = None,
) -> Path:
    """Train one expert on ``dataset`` (already restricted to its shard); return the checkpoint.

    ``init_state`` starts from given weights (a warm start); ``resume`` continues an interrupted
    run of the same settings exactly. With ``settings.text_encoder`` the expert is conditioned
    on caption embeddings (cached once per distinct caption under ``cache_dir``); the training
    loop's label column then carries caption ids, dropped to -1 (null) with ``label_dropout``.
    ``autoencoder`` (a ``KLAutoencoder.to_dict()``) records that ``dataset`` holds its latents.
    ``allow_lr_change`` lets a resume continue with ``settings.lr`` (e.g. after a divergence).
    ``state_url`` mirrors each committed training state to a store (``training.state_mirror``).
    """
    if len(dataset) == 0:
        raise HetdiffError("the expert's data shard is empty; pick another cluster or dataset")
    out_dir = Path(out_dir)
    bank = labels = None
    if settings.text_encoder is not None:
        from hetdiff.training.captions import dataset_caption_bank

        bank, labels = dataset_caption_bank(
            dataset, settings.text_encoder, settings.caption_seed, cache_dir
        )
    elif settings.class_conditional:
        labels = dataset.labels
    net, model_dict, loss_fn = expert_net_and_loss(
        settings,
        dataset,
        None if bank is None else bank.dim,
        None if bank is None else lambda: bank,
    )
    if init_state is not None:
        net.load_state_dict(init_state, strict=True)
    config = train_config_for(settings, len(dataset))
    checkpoint = out_dir / EXPERT_FILE

    def on_checkpoint(ema_state: dict[str, Tensor], step: int) -> None:
        spec = build_expert_spec(
            settings,
            dataset,
            model_dict,
            step,
            cluster_id,
            num_clusters,
            partition_fingerprint,
            provenance,
            autoencoder,
        )
        save_expert(checkpoint, ema_state, spec)

    train(net, dataset.images, labels, loss_fn, config, out_dir, on_checkpoint, resume=resume,
          allow_lr_change=allow_lr_change, state_url=state_url)  # fmt: skip
    return checkpoint
