"""Flow fine-tuning of an expert checkpoint: a flow expert, or a DDPM expert converted for flow
(``hetdiff.experts.convert.convert_to_flow``).

The network stays the checkpoint's and is read through the adapter its spec calls for
(``experts.build.velocity_from_spec``: DDPMVelocity for a converted expert, FlowVelocity for a
flow one); the loss is flow matching on that velocity:

    loss = |v(x_t, t, c) - (eps - x0)|^2,  x_t = (1 - t) x0 + t eps,  t inside v's valid range.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hetdiff.config import ExpertSettings
from hetdiff.errors import HetdiffError
from hetdiff.experts.build import trains_with_flow, velocity_from_spec
from hetdiff.experts.convert import source_record
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import load_expert_model, read_spec, save_expert
from hetdiff.objectives.kinds import FLOW, uses_schedule
from hetdiff.objectives.losses import LossFn, make_loss_fn
from hetdiff.training.expert import EXPERT_FILE, train_config_for


def flow_finetune_loss(
    spec: ExpertSpec, time_sampling: str = "logit_normal", label_dropout: float = 0.1
) -> LossFn:
    """``loss_fn(net, x0, labels, generator) -> (B,)``: the flow-matching loss on the velocity
    of ``net`` read through the adapter ``spec`` calls for (DDPMVelocity for a converted
    expert, FlowVelocity for a flow one)."""
    if not trains_with_flow(spec):
        raise HetdiffError(
            "a DDPM expert trains with the flow loss only after conversion; run "
            "`hetdiff convert --from CKPT --to flow` first"
        )
    return make_loss_fn(
        FLOW,
        time_sampling=time_sampling,
        label_dropout=label_dropout,
        wrap=lambda net: velocity_from_spec(net, spec),
    )


def check_init_fits(
    spec: ExpertSpec, dataset: Any, init: str | Path, model: str | None = None
) -> None:
    """One-line errors unless the checkpoint ``init`` can be fine-tuned on ``dataset`` (and is
    the architecture of the named config ``model``, when one is requested)."""
    if not trains_with_flow(spec):
        raise HetdiffError(
            f"{init} is a DDPM expert; convert it first: hetdiff convert --from {init} --to flow "
            "--out DIR, then --init DIR/expert.safetensors"
        )
    if spec.text_encoder is not None:
        raise HetdiffError(f"{init} is caption-conditioned; --init supports class experts only")
    if (spec.resolution, spec.channels) != (dataset.resolution, dataset.channels):
        raise HetdiffError(
            f"{init} was trained at {spec.resolution} px, {spec.channels} channel(s) but the data "
            f"is {dataset.resolution} px, {dataset.channels} channel(s); pass --resolution "
            f"{spec.resolution} or other data"
        )
    if spec.num_classes and spec.num_classes != dataset.num_classes:
        raise HetdiffError(
            f"{init} has {spec.num_classes} classes but the data has {dataset.num_classes}; use "
            "the data it was trained on"
        )
    if model is not None:
        from hetdiff.models.dit import DIT_CONFIGS, dit_config

        named = dit_config(model).to_dict()
        fields = [k for k in DIT_CONFIGS[model] if named[k] != spec.model.get(k)]
        if fields:
            have = ", ".join(f"{k} {spec.model.get(k)}" for k in fields)
            want = ", ".join(f"{k} {named[k]}" for k in fields)
            raise HetdiffError(
                f"architecture mismatch: {init} has {have} but --model {model} has {want}; drop "
                "--model or pass the checkpoint's"
            )


def finetune_expert(
    init: str | Path,
    dataset: Any,
    settings: ExpertSettings,
    out_dir: str | Path,
    cluster_id: int | None = None,
    num_clusters: int | None = None,
    partition_fingerprint: str | None = None,
    resume: bool = False,
    model: str | None = None,
    allow_lr_change: bool = False,
    state_url: str | None = None,
) -> Path:
    """Train the flow (or converted) expert ``init`` further with the flow loss on ``dataset``.

    ``settings`` gives steps, batch, lr, EMA, seed, time sampling and label dropout; its
    architecture fields are ignored: the network is the checkpoint's (``model``, when given,
    must name that architecture). Writes ``out_dir/expert.safetensors`` at every checkpoint
    with the init's spec (objective, schedule, model unchanged), this run's steps, data and
    cluster, and provenance ``finetuned_from``. Returns the checkpoint path. ``state_url``
    mirrors each committed training state to a store (``training.state_mirror``).
    """
    from hetdiff.training.loop import train

    init = Path(init)
    spec = read_spec(init)
    check_init_fits(spec, dataset, init, model)
    if uses_schedule(settings.objective):
        raise HetdiffError("--init fine-tunes with the flow loss; drop --objective ddpm")
    if len(dataset) == 0:
        raise HetdiffError("the expert's data shard is empty; pick another cluster or dataset")
    # the spec's shapes are checked against the file's tensors before the network is built
    net: nn.Module = load_expert_model(init)[0]
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    labels = dataset.labels if spec.num_classes else None
    loss_fn = flow_finetune_loss(spec, settings.time_sampling, settings.label_dropout)
    train_config = train_config_for(settings, len(dataset))
    provenance = {**spec.provenance, "finetuned_from": source_record(init, state, spec)}
    checkpoint = Path(out_dir) / EXPERT_FILE

    def on_checkpoint(ema_state: dict[str, Tensor], step: int) -> None:
        out_spec = dataclasses.replace(
            spec,
            steps=step,
            data_spec=dataset.spec,
            data_fingerprint=dataset.fingerprint,
            cluster_id=cluster_id,
            num_clusters=num_clusters,
            partition_fingerprint=partition_fingerprint,
            provenance=provenance,
        )
        save_expert(checkpoint, ema_state, out_spec)

    train(net, dataset.images, labels, loss_fn, train_config, out_dir, on_checkpoint,
          resume=resume, allow_lr_change=allow_lr_change, state_url=state_url)  # fmt: skip
    return checkpoint
