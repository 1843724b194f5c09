"""Distill a teacher velocity field into one dense flow student (design.md section 4).

The teacher is any velocity function u(x_t, t, c) with its valid t_range; for ``hetdiff
distill`` it is the routed ensemble u = sum_k r_k(x_t, t, c) v_k(x_t, t, c), loaded by the
caller (``hetdiff.pipeline.distill``). The student is an ordinary DiT flow expert trained on
the flow path over the union of the clusters' data:

    x0 ~ union of the clusters, eps ~ N(0, I), t ~ p(t) inside the teacher's t_range,
    x_t = (1 - t) x0 + t eps,  c = label, replaced by the null class with prob. label_dropout,
    loss = mean over dims of |v_student(x_t, t, c) - u_teacher(x_t, t, c)|^2.

Regressing on the teacher's velocity (not on eps - x0) gives the student a target without the
conditional variance of the flow-matching target, so it learns the ensemble's own field. The
student covers the teacher's range [t_min, t_max]; it samples from t = 1 like any flow expert,
extrapolating over (t_max, 1] (width 1 - t_max, e.g. 0.006 for a linear-schedule DDPM expert).
The result is a flow ``ExpertSpec`` (cluster_id None) with provenance ``distilled_from``: one
model that ``hetdiff sample --expert`` uses in place of K experts and a router.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import hetdiff
from hetdiff.config import DistillSettings
from hetdiff.errors import HetdiffError
from hetdiff.objectives.kinds import FLOW, default_prediction
from hetdiff.objectives.losses import LossFn, sample_flow_times
from hetdiff.objectives.paths import flow_interpolate
from hetdiff.objectives.velocity import DEFAULT_TIME_SCALE, FlowVelocity

VelocityFn = Callable[[Tensor, Tensor, Any], Tensor]  # teacher(x_t, t, cond) -> velocity

STUDENT_FILE = "expert.safetensors"


def distill_loss_fn(
    teacher: VelocityFn,
    t_range: tuple[float, float] = (0.0, 1.0),
    label_dropout: float = 0.1,
    time_sampling: str = "uniform",
    time_scale: float = DEFAULT_TIME_SCALE,
) -> LossFn:
    """``loss_fn(student, x0, labels, generator) -> (B,)``: |v_student - u_teacher|^2 per sample
    at x_t = (1 - t) x0 + t eps on the flow path, t drawn inside ``t_range`` (the teacher's valid
    range). ``teacher(x_t (B, C, H, W), t (B,), cond) -> u (B, C, H, W)`` runs without
    gradients; the student net sees the timestep t * time_scale (an ordinary flow expert)."""
    from hetdiff.conditioning import drop_labels

    t_range = (float(t_range[0]), float(t_range[1]))

    def loss_fn(
        student: nn.Module, x0: Tensor, labels: Tensor | None, generator: torch.Generator
    ) -> Tensor:
        cond = None if labels is None else drop_labels(labels, label_dropout, generator)
        n, device = x0.shape[0], x0.device
        t = sample_flow_times(n, generator, device, time_sampling, t_range).to(x0.dtype)
        eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        x_t = flow_interpolate(x0, eps, t)  # (B, C, H, W)
        with torch.no_grad():
            target = teacher(x_t, t, cond)  # (B, C, H, W), the teacher's velocity
        velocity = FlowVelocity(student, time_scale)(x_t, t, cond)
        return ((velocity.float() - target.float()) ** 2).flatten(1).mean(dim=1)

    return loss_fn


def union_dataset(specs: list[Any], cluster_ids: list[int], partition: Any | None = None) -> Any:
    """The data the experts were trained on, as one set: their ``data_spec`` at their resolution,
    restricted to the present clusters of ``partition`` when one is given (it must be given when
    clusters are missing, else the union is the whole data set)."""
    from hetdiff.data.datasets import load_dataset

    data_specs = sorted({spec.data_spec for spec in specs})
    if len(data_specs) != 1 or not data_specs[0]:
        raise HetdiffError(
            f"the experts record data specs {data_specs}; distillation needs experts of one "
            "named data set"
        )
    if any(spec.autoencoder is not None or spec.text_encoder is not None for spec in specs):
        raise HetdiffError(
            "distillation supports pixel-space, class-conditional or unconditional experts; "
            "these are latent or caption-conditioned"
        )
    first = specs[0]
    dataset = load_dataset(data_specs[0], resolution=first.resolution, channels=first.channels)
    if partition is None:
        return dataset
    partition.check_dataset(dataset)
    if any(spec.partition_fingerprint not in (None, partition.fingerprint) for spec in specs):
        raise HetdiffError(
            f"the experts were trained on another partition than {partition.fingerprint}; "
            "pass the experts' partition"
        )
    ids = torch.cat([torch.as_tensor(partition.ids_of(k)) for k in sorted(cluster_ids)])
    return dataset.subset(ids)


def distill(
    teacher: VelocityFn,
    t_range: tuple[float, float],
    dataset: Any,
    out_dir: str | Path,
    settings: DistillSettings | None = None,
    class_conditional: bool = True,
    partition_fingerprint: str | None = None,
    provenance: dict[str, Any] | None = None,
    resume: bool = False,
    allow_lr_change: bool = False,
) -> Path:
    """Train a dense flow student on ``teacher``'s velocity over ``dataset`` (an
    ``ImageDataset``, e.g. ``union_dataset``); write ``out_dir/expert.safetensors`` (EMA
    weights, a flow ExpertSpec with cluster_id None and ``provenance``) and return its path.

    ``teacher(x, t, cond) -> v`` is valid on ``t_range`` (an ensemble: its experts' common
    range); ``class_conditional`` trains the student on the data's labels (the teacher then
    receives them too, or the null class when dropped).
    """
    from hetdiff.experts.spec import ExpertSpec
    from hetdiff.experts.store import save_expert
    from hetdiff.models.dit import DiT, dit_config
    from hetdiff.training.expert import train_config_for
    from hetdiff.training.loop import train

    settings = settings or DistillSettings()
    num_classes = dataset.num_classes if class_conditional else 0
    class_names = tuple(dataset.class_names) if class_conditional else ()
    config = dit_config(
        settings.model,
        input_size=dataset.resolution,
        in_channels=dataset.channels,
        num_classes=num_classes,
    )
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed alone
        torch.manual_seed(settings.seed)
        student = DiT(config)
    labels = dataset.labels if num_classes else None
    loss_fn = distill_loss_fn(teacher, t_range, settings.label_dropout, settings.time_sampling)
    train_config = train_config_for(settings, len(dataset))
    checkpoint = Path(out_dir) / STUDENT_FILE

    def on_checkpoint(ema_state: dict[str, Tensor], step: int) -> None:
        spec = ExpertSpec(
            objective=FLOW,
            prediction=default_prediction(FLOW),
            schedule=None,
            model={"arch": "dit", "name": settings.model, **config.to_dict()},
            cluster_id=None,
            num_clusters=None,
            data_spec=dataset.spec,
            data_fingerprint=dataset.fingerprint,
            partition_fingerprint=partition_fingerprint,
            resolution=dataset.resolution,
            channels=dataset.channels,
            num_classes=num_classes,
            class_names=class_names,
            steps=step,
            time_scale=DEFAULT_TIME_SCALE,
            provenance=provenance or {},
            hetdiff_version=hetdiff.__version__,
        )
        save_expert(checkpoint, ema_state, spec)

    train(student, dataset.images, labels, loss_fn, train_config, out_dir, on_checkpoint, resume,
          allow_lr_change=allow_lr_change)  # fmt: skip
    return checkpoint
