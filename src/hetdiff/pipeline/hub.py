"""Hub interop as library calls: ``hetdiff import-expert`` (a diffusers folder -> an expert) and
``hetdiff export`` (a run's ensemble -> a diffusers-style tree), and loading that tree back.

The exported tree is itself an expert registry (each ``expert_k/diffusion_pytorch_model
.safetensors`` carries its hetdiff spec) with its router in ``router/``, so ``load_exported``,
``hetdiff sample --experts TREE --router TREE/router`` and the diffusers pipeline
(``pipeline/diffusers_pipeline.py``) all read the same files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from hetdiff.errors import HetdiffError

EXPORT_FORMATS = ("diffusers",)


def import_expert_command(
    path: str | Path,
    out: str | Path,
    cluster: int | None = None,
    partition: str | Path | None = None,
    experts: str | Path | None = None,
    text_encoder: str | None = None,
) -> Path:
    """Import the diffusers model folder ``path`` as the expert ``out/expert.safetensors`` of
    ``cluster`` (``partition``: record its K and fingerprint, and check the cluster exists;
    ``experts``: the registry it must fit). Prints what was read; returns the checkpoint path."""
    from hetdiff.experts.diffusers_import import import_diffusers_expert

    num_clusters = fingerprint = None
    if partition is not None:
        from hetdiff.data.partition import Partition

        manifest = Partition.load(str(partition))
        num_clusters, fingerprint = manifest.k, manifest.fingerprint
        if cluster is None or not 0 <= cluster < num_clusters:
            raise HetdiffError(
                f"--cluster {cluster} is not a cluster of {partition} (K={num_clusters}); "
                f"pass one in 0..{num_clusters - 1}"
            )
    if cluster is not None and cluster < 0:
        raise HetdiffError(f"--cluster must be >= 0, got {cluster}")
    target, spec = import_diffusers_expert(
        path, out, cluster, num_clusters, fingerprint, experts, text_encoder
    )
    schedule = "" if spec.schedule is None else f", schedule {spec.schedule['name']}"
    print(
        f"wrote {target}: {spec.model['class']} as a {spec.objective} expert "
        f"(prediction {spec.prediction}{schedule}, {spec.resolution} px, {spec.channels} "
        f"channel(s), {spec.num_classes} classes, cluster {cluster})"
    )
    return target


def _run_inputs(run: Path) -> tuple[Path, Path, dict[str, Any] | None]:
    """(experts folder, router folder, metrics or None) of a run folder."""
    from hetdiff.pipeline.layout import RunLayout

    layout = RunLayout(run)
    if not layout.experts.is_dir():
        raise HetdiffError(f"{run} has no experts/ folder; give a run folder from `hetdiff run`")
    metrics = None
    if layout.metrics.is_file():
        try:
            metrics = json.loads(layout.metrics.read_text())
        except ValueError:
            metrics = None
    return layout.experts, layout.router, metrics


def export_command(run: str | Path, out: str | Path, fmt: str = "diffusers") -> Path:
    """Write the ensemble of the run folder ``run`` (experts/, router/, metrics.json) as a
    diffusers-style tree at ``out`` (see ``experts/diffusers_export.py``): built in
    ``out.partial`` and renamed when complete, so ``out`` is never half-written."""
    from hetdiff.experts.diffusers_export import (
        PIPELINE_FILE,
        ROUTER_FOLDER,
        expert_folder,
        model_card,
        model_index,
        pipeline_source,
        write_expert_folder,
    )
    from hetdiff.experts.router_store import read_router_spec, router_file
    from hetdiff.experts.store import list_experts, load_expert_state
    from hetdiff.sampling.ensemble import check_experts_fit

    if fmt not in EXPORT_FORMATS:
        raise HetdiffError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.exists():
        raise HetdiffError(f"--out {out} exists; export into a new folder")
    experts_dir, router_dir, metrics = _run_inputs(Path(run))
    router_spec = read_router_spec(router_dir)
    entries = list_experts(experts_dir)
    check_experts_fit(entries, router_spec, router_file(router_dir))
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    specs = []
    for path, _ in sorted(entries, key=lambda entry: entry[1].cluster_id):
        state, spec = load_expert_state(path)
        specs.append(write_expert_folder(partial / expert_folder(spec.cluster_id), state, spec))
    router_out = partial / ROUTER_FOLDER
    router_out.mkdir()
    shutil.copyfile(router_file(router_dir), router_out / "router.safetensors")
    router = json.loads(router_spec.to_json())
    (router_out / "config.json").write_text(json.dumps(router, indent=2, sort_keys=True) + "\n")
    index = model_index(specs, router)
    (partial / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (partial / "README.md").write_text(model_card(specs, router, metrics))
    (partial / PIPELINE_FILE).write_text(pipeline_source(specs))
    os.replace(partial, out)
    folders = ", ".join(expert_folder(s.cluster_id) for s in specs)
    print(f"wrote {out}: {len(specs)} experts ({folders}), router, model card, {PIPELINE_FILE}")
    return out


def load_exported(
    tree: str | Path,
    device: torch.device | str = "cpu",
    strategy: str = "full",
    top_k: int = 2,
    seed: int = 0,
    top_p: float | None = None,
) -> Any:
    """The ensemble of an exported tree (its experts are the diffusers modules themselves);
    ``top_p`` of nucleus (None: the default, ``hetdiff.config.SampleSettings``)."""
    from hetdiff.experts.diffusers_export import ROUTER_FOLDER
    from hetdiff.sampling.ensemble import TOP_P, load_ensemble

    tree = Path(tree)
    if not (tree / "model_index.json").is_file():
        raise HetdiffError(f"{tree} has no model_index.json; give a tree from `hetdiff export`")
    return load_ensemble(tree, tree / ROUTER_FOLDER, device=device, strategy=strategy, top_k=top_k,
                         seed=seed, top_p=TOP_P if top_p is None else top_p)  # fmt: skip
