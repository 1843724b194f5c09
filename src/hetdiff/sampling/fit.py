"""Whether expert checkpoints and a router fit together as one ensemble (``load_ensemble`` and
the diffusers pipeline check with ``check_experts_fit`` before any network is built): one
resolution, channel count, conditioning, text encoder and latent space; the router's partition
and conditioning; one expert per cluster. Every refusal is a one-line ``HetdiffError`` naming
the checkpoints and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hetdiff.errors import HetdiffError


def expert_conditioning(spec: Any) -> str:
    """ "text" (cross-attention), "class" (num_classes > 0) or "none" for an ExpertSpec."""
    if spec.model.get("context_dim") is not None:
        return "text"
    return "class" if spec.num_classes else "none"


def _label(path: Path) -> str:
    """How errors name a checkpoint: with its folder when the file name is the standard one
    (``expert-0/expert.safetensors``, ``router/router.safetensors``)."""
    standard = path.name in ("expert.safetensors", "router.safetensors")
    return f"{path.parent.name}/{path.name}" if standard else path.name


def check_experts_fit(
    entries: Sequence[tuple[Path, Any]], router_spec: Any, router_path: Path | None = None
) -> None:
    """Raise a one-line HetdiffError unless the (path, ExpertSpec) entries and the router fit:
    same resolution, channels and conditioning; one text encoder (text experts) and one latent
    space; the router's partition and conditioning (an unconditional router fits any experts;
    a text router needs text experts of its encoder, a class router class experts); one expert
    per cluster. Missing clusters are left to ``Ensemble`` (they depend on allow_missing)."""
    from hetdiff.models.autoencoder import latent_space_name

    first_path, first = entries[0]
    first_name = _label(first_path)
    owner: dict[int, Path] = {}
    for path, spec in entries:
        name = _label(path)
        for field in ("resolution", "channels"):
            if getattr(spec, field) != getattr(first, field):
                raise HetdiffError(
                    f"experts differ in {field}: {name} has {getattr(spec, field)}, "
                    f"{first_name} has {getattr(first, field)}; use experts of one data set"
                )
        kind, classes = expert_conditioning(spec), spec.num_classes
        if (kind, classes) != (expert_conditioning(first), first.num_classes):
            raise HetdiffError(
                f"experts differ in conditioning: {name} is {kind} ({classes} classes), "
                f"{first_name} is {expert_conditioning(first)} ({first.num_classes} classes); "
                "an ensemble needs one: retrain the odd expert like the others"
            )
        if spec.text_encoder != first.text_encoder:
            raise HetdiffError(
                f"experts differ in text encoder: {name} was trained on {spec.text_encoder}, "
                f"{first_name} on {first.text_encoder}; an ensemble needs one encoder: retrain "
                f"{name} with --text-encoder {first.text_encoder}"
            )
        space = latent_space_name(spec.autoencoder)
        if space != latent_space_name(first.autoencoder):
            first_space = latent_space_name(first.autoencoder)
            fix = "without --autoencoder"
            if first.autoencoder is not None:
                fix = f"with --autoencoder {first.autoencoder.get('path')}"
            raise HetdiffError(
                f"experts differ in latent space: {name} lives in {space}, {first_name} in "
                f"{first_space}; an ensemble needs one: retrain {name} {fix}"
            )
        if spec.cluster_id is None:
            raise HetdiffError(
                f"expert {name} has no cluster_id; train it with --partition and --cluster"
            )
        if spec.cluster_id in owner:
            raise HetdiffError(
                f"cluster {spec.cluster_id} has more than one expert "
                f"({_label(owner[spec.cluster_id])} and {name}); keep one expert per cluster"
            )
        owner[spec.cluster_id] = path
        if spec.num_clusters is not None and spec.num_clusters != router_spec.num_clusters:
            raise HetdiffError(
                f"expert {name} was trained on a K={spec.num_clusters} partition but the "
                f"router on K={router_spec.num_clusters}; use a router of the experts' partition"
            )
        if spec.partition_fingerprint not in (None, router_spec.partition_fingerprint):
            raise HetdiffError(
                f"the router was trained on partition {router_spec.partition_fingerprint} but "
                f"expert {name} on {spec.partition_fingerprint}; train the router on the "
                "experts' partition"
            )
    for field in ("resolution", "channels"):
        if getattr(router_spec, field) != getattr(first, field):
            raise HetdiffError(
                f"the router's {field} is {getattr(router_spec, field)} but the experts' is "
                f"{getattr(first, field)}; train the router on the experts' data"
            )
    _check_router_conditioning(router_spec, first, first_name, router_path)


def _check_router_conditioning(
    router_spec: Any, expert: Any, expert_name: str, router_path: Path | None
) -> None:
    """A conditioned router must read the experts' condition: the same classes, or captions of
    the same text encoder (one-line errors naming the router, an expert and the fix)."""
    kind, conditioning = expert_conditioning(expert), router_spec.conditioning
    if conditioning == "none":
        return
    where = "" if router_path is None else f", {_label(router_path)}"
    experts = f"the experts (e.g. {expert_name})"
    if conditioning == "text" and kind != "text":
        raise HetdiffError(
            f"the router is conditioned on text ({router_spec.text_encoder}{where}) but {experts} "
            f"are {kind} ({expert.num_classes} classes); retrain the router without "
            "--text-encoder, or use text experts"
        )
    if conditioning == "class" and kind == "text":
        raise HetdiffError(
            f"the router is class-conditioned ({router_spec.num_classes} classes{where}) but "
            f"{experts} are conditioned on text ({expert.text_encoder}); retrain the router "
            f"with --text-encoder {expert.text_encoder}"
        )
    if conditioning == "text":
        named = router_spec.text_encoder is not None
        if (named and router_spec.text_encoder != expert.text_encoder) or (
            router_spec.model.get("context_dim") != expert.model.get("context_dim")
        ):
            raise HetdiffError(
                f"the router reads captions of text encoder {router_spec.text_encoder} "
                f"({router_spec.model.get('context_dim')}-d{where}) but {experts} were trained "
                f"on {expert.text_encoder} ({expert.model.get('context_dim')}-d); retrain the "
                f"router with --text-encoder {expert.text_encoder}"
            )
        return
    if kind != "class" or router_spec.num_classes != expert.num_classes:
        raise HetdiffError(
            f"the router is class-conditioned ({router_spec.num_classes} classes{where}) but "
            f"{experts} are {kind} ({expert.num_classes} classes); use an unconditional router "
            "or one with the experts' conditioning"
        )
