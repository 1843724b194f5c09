"""``hetdiff distill`` as one library call: load the routed ensemble (``sampling.ensemble``) as
the teacher velocity, gather the clusters' data, and train the student
(``hetdiff.training.distill.distill``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hetdiff.config import DistillSettings
from hetdiff.errors import HetdiffError
from hetdiff.experts.store import list_experts
from hetdiff.io import atomic_write_json
from hetdiff.sampling.compiled import compile_for_sampling
from hetdiff.sampling.ensemble import load_ensemble
from hetdiff.training.distill import distill, union_dataset


def _file_sha256(path: Path) -> str | None:
    """The weights' sha256 a checkpoint's metadata records (None when absent)."""
    import safetensors

    from hetdiff.experts.store import DIGEST_KEY, HASH_KEY

    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return metadata.get(DIGEST_KEY) or metadata.get(HASH_KEY)


def distill_command(
    experts_dir: str | Path,
    router_path: str | Path,
    out_dir: str | Path,
    settings: DistillSettings | None = None,
    partition: str | Path | None = None,
    allow_missing: bool = False,
    resume: bool = False,
    allow_lr_change: bool = False,
) -> Path:
    """Train a dense flow student on the ensemble ``experts_dir`` + ``router_path``; write
    ``out_dir/expert.safetensors`` (EMA weights, a flow ExpertSpec with provenance
    ``distilled_from``) and ``out_dir/distill_config.json``; print and return the path.

    ``partition`` (a manifest from ``hetdiff cluster``) restricts the data to the clusters that
    have an expert; without it the student trains on the experts' whole data set (refused when
    clusters are missing). The teacher routes with ``settings.strategy``; ``settings.compile``
    compiles the teacher's networks and the student (``torch.compile``, a speed setting).
    """
    settings = settings or DistillSettings()
    out_dir = Path(out_dir)
    resolved = {
        "settings": settings.__dict__,
        "experts": str(experts_dir),
        "router": str(router_path),
        "partition": None if partition is None else str(partition),
    }
    print(json.dumps(resolved, default=str))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_ensemble(
        experts_dir,
        router_path,
        device=device,
        strategy=settings.strategy,
        allow_missing=allow_missing,
        seed=settings.seed,
    ).eval()
    if settings.compile:  # the student is compiled by the trainer (TrainConfig.compile)
        compile_for_sampling(teacher)
    entries = list_experts(experts_dir)
    specs = [spec for _, spec in entries]
    loaded = None
    if partition is not None:
        from hetdiff.data.partition import Partition

        loaded = Partition.load(partition)
    elif teacher.missing_clusters:
        raise HetdiffError(
            f"clusters {teacher.missing_clusters} have no expert; pass --partition so the "
            "student trains on the clusters present only"
        )
    dataset = union_dataset(specs, teacher.cluster_ids, loaded)
    # written once the inputs passed their checks: a refused distillation leaves no out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "distill_config.json", resolved)
    provenance: dict[str, Any] = {
        "distilled_from": {
            "experts": [
                {
                    "path": str(path),
                    "sha256": _file_sha256(path),
                    "cluster_id": spec.cluster_id,
                    "objective": spec.objective,
                    "model": spec.model.get("name"),
                }
                for path, spec in entries
            ],
            "router": str(router_path),
            "strategy": settings.strategy,
            "t_range": list(teacher.t_range),
            "settings": settings.__dict__,
        }
    }
    path = distill(
        teacher,
        teacher.t_range,
        dataset,
        out_dir,
        settings,
        class_conditional=bool(specs[0].num_classes),
        partition_fingerprint=None if loaded is None else loaded.fingerprint,
        provenance=provenance,
        resume=resume,
        allow_lr_change=allow_lr_change,
    )
    print(f"wrote {path}")
    return path
