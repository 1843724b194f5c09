"""Training, clustering and whole runs from Python: the library entries the commands call.

Each function here calls the same library function as its command (``hetdiff train-expert``,
``train-router``, ``cluster``, ``run``), so a notebook and a shell get the same files, the same
one-line ``HetdiffError`` for bad input, and the same resumable, atomically written outputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hetdiff.config import ExpertSettings, RouterSettings, RunConfig, load_config, validate_run
from hetdiff.errors import HetdiffError

if TYPE_CHECKING:
    from hetdiff.data.partition import Partition

SettingsLike = Any  # a settings object, a mapping of its fields, or None (all defaults)


def _settings(kind: type, value: SettingsLike) -> Any:
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        from hetdiff.config import build_settings

        return build_settings(kind, dict(value), f"{kind.__name__}.")
    raise HetdiffError(
        f"settings must be {kind.__name__}, a mapping of its fields or None; "
        f"got {type(value).__name__}"
    )


def train_expert(
    data: str,
    out: str | Path,
    settings: ExpertSettings | Mapping[str, Any] | None = None,
    *,
    resolution: int | None = None,
    partition: str | Path | None = None,
    cluster: int | None = None,
    resume: bool = False,
    init: str | Path | None = None,
    autoencoder: str | Path | None = None,
) -> Path:
    """Train one expert alone and return its checkpoint, ``out/expert.safetensors``.

    Args:
        data: a data set spec: ``"digits"``, ``"mnist5k"``, ``"animal-mnist"``,
            ``"fashion-mnist"``, ``"imagefolder:PATH"`` (``PATH/<class>/*.png|jpg``), or a union
            joined with ``+`` (default data of a run: ``"mnist5k+animal-mnist"``).
        out: the expert's folder: ``expert.safetensors`` (EMA weights + spec), ``log.jsonl``
            (step, loss, lr, images/s), ``train_state/`` (for ``resume``).
        settings: ``ExpertSettings`` or a mapping of its fields, e.g.
            ``{"objective": "ddpm", "prediction": "v", "schedule": "cosine", "steps": 2000}``;
            None = the defaults (flow, DiT ``"tiny"``, 1000 steps of 64 images, lr 1e-3).
        resolution: image side in px (default: the data's native side).
        partition: a partition manifest (``cluster`` / ``hetdiff cluster``); goes with ``cluster``.
        cluster: train on this cluster of ``partition`` only, 0 <= cluster < K.
        resume: continue an interrupted run of the same job exactly.
        init: fine-tune this flow (or converted DDPM) checkpoint with the flow loss instead of
            starting from scratch.
        autoencoder: a diffusers ``AutoencoderKL`` folder: train in its latent space.

    Same job as ``hetdiff train-expert`` (``hetdiff.training.jobs.run_expert_job``).
    """
    from hetdiff.training.jobs import ExpertJob, run_expert_job

    job = ExpertJob(
        data=data,
        out=str(out),
        settings=_settings(ExpertSettings, settings),
        resolution=resolution,
        partition=None if partition is None else str(partition),
        cluster=cluster,
        resume=resume,
        init=None if init is None else str(init),
        autoencoder=None if autoencoder is None else str(autoencoder),
    )
    return run_expert_job(job)


def train_router(
    data: str,
    partition: str | Path | Partition,
    out: str | Path,
    settings: RouterSettings | Mapping[str, Any] | None = None,
    *,
    resolution: int | None = None,
    class_conditional: bool = True,
    text_encoder: str | None = None,
    resume: bool = False,
) -> Path:
    """Train the router r(k | x_t, t, cond) and return ``out/router.safetensors``.

    It learns, by cross-entropy, the cluster k of x0 from x_t = (1 - t) x0 + t eps at
    t ~ U(0, 1): at t -> 1 its weights tend to the cluster priors, at t -> 0 to one-hot.

    Args:
        data: the data set spec the partition was made from (see ``train_expert``).
        partition: the ``Partition`` or its manifest path; its K is the router's output width.
        out: the router's folder (``router.safetensors``, ``log.jsonl``, ``train_state/``).
        settings: ``RouterSettings`` or a mapping of its fields (default: 600 steps of 128,
            lr 2e-3, width 32).
        resolution: image side in px, the experts' (default: native).
        class_conditional: condition on class labels when the data has classes (default).
        text_encoder: condition on each image's caption embedded by ``"hash"``, ``"minilm"`` or a
            transformers folder, the experts' encoder; replaces class labels.
        resume: continue an interrupted run exactly.

    The same training as ``hetdiff train-router`` (``hetdiff.training.router.train_router``),
    without its accuracy table.
    """
    from hetdiff.data.datasets import load_dataset
    from hetdiff.data.partition import Partition
    from hetdiff.training.router import train_router as train

    if text_encoder is not None and not class_conditional:
        raise HetdiffError("text_encoder and class_conditional=False exclude each other; give one")
    if not isinstance(partition, Partition):
        partition = Partition.load(str(partition))
    return train(
        load_dataset(data, resolution=resolution), partition, out,
        _settings(RouterSettings, settings), class_conditional=class_conditional,
        text_encoder=text_encoder, resume=resume,
    )  # fmt: skip


def cluster(
    data: str,
    k: int,
    out: str | Path | None = None,
    *,
    fine: int | None = None,
    features: str | None = None,
    seed: int = 0,
    balanced: bool = False,
    resolution: int | None = None,
    pca_dim: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Partition:
    """Split a data set into ``k`` expert shards by two-stage k-means of image features.

    Args:
        data: a data set spec (see ``train_expert``).
        k: number of clusters = experts, 2 <= k <= number of images.
        out: write the manifest here (a path or fsspec URL ending in ``.json``) with a montage
            ``<stem>.montage.png`` beside it, as ``hetdiff cluster`` does; None keeps it in memory
            (``Partition.save`` writes it later).
        fine: fine k-means centroids (default ``min(1024, max(k, N // 20))``).
        features: ``"efficientnet-lite0"`` (default; ``@<px>`` picks its input size) or
            ``"pixels"``.
        seed: k-means seed; the partition is deterministic for a seed.
        balanced: balance the cluster sizes.
        resolution: efficientnet input size in px (default 112).
        pca_dim: PCA width for ``"pixels"`` features (default: no PCA).
        cache_dir: the feature cache (default ``~/.cache/hetdiff``).
        progress: show progress bars.

    Returns:
        The ``Partition`` with ``k``, ``ids`` (N,), ``clusters`` (N,) in [0, k), ``sizes``,
            ``fingerprint`` (experts and router record it, so mismatched shards are refused).
    """
    from hetdiff.data.features import DEFAULT_ENCODER

    features = features or DEFAULT_ENCODER
    cache = None if cache_dir is None else str(cache_dir)
    if out is not None:
        from hetdiff.pipeline.cluster import cluster_command

        return cluster_command(
            str(out), k, data=data, fine=fine, features=features, seed=seed, balanced=balanced,
            cache_dir=cache, resolution=resolution, pca_dim=pca_dim, progress=progress,
        )  # fmt: skip
    from hetdiff.data.datasets import load_dataset
    from hetdiff.data.partition import cluster_dataset

    return cluster_dataset(
        load_dataset(data), k, fine, features, seed, balanced, cache, progress,
        resolution=resolution, pca_dim=pca_dim,
    )  # fmt: skip


def run(
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    out: str | Path = "runs/default",
    *,
    preset: str | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline (cluster, experts, router, sample, evaluate, report) into ``out``.

    Args:
        config: a ``RunConfig``, a mapping of its fields (``{"data": "digits", "cluster":
            {"k": 2}, ...}``, tables as nested mappings), a TOML/YAML/JSON file, or None (the
            defaults: 4 experts, 2 DDPM + 2 flow, on ``"mnist5k+animal-mnist"`` at 16 px).
        out: the run folder; a killed run resumes from its finished stages when run again.
        preset: ``"quick"`` replaces the keys ``hetdiff.QUICK`` names (a two-minute run).

    Returns:
        The run's metrics (``out/metrics.json``) with, per strategy, FID, diversity, NFE and FLOPs,
            router accuracy per t bucket, and the resolved config. The config is validated
            completely before the first stage, so bad values leave ``out`` untouched.

    Same as ``hetdiff run [CONFIG] --out OUT [--quick]``.
    """
    from hetdiff.pipeline.run import Run

    if isinstance(config, RunConfig):
        if preset is not None:
            raise HetdiffError("preset applies to a config file or mapping; apply it yourself")
        resolved = validate_run(config)
    elif isinstance(config, Mapping):
        resolved = load_config(None, overrides=dict(config), preset=preset)
    else:
        resolved = load_config(config, preset=preset)
    return Run(resolved, out).execute()


def read_metrics(run_folder: str | Path) -> dict[str, Any]:
    """The metrics of a finished ``hetdiff run`` folder (``metrics.json``) as a dict."""
    from hetdiff.pipeline.layout import RunLayout

    path = RunLayout(Path(run_folder)).metrics
    if not path.is_file():
        raise HetdiffError(f"{path} does not exist; run the pipeline into {run_folder} first")
    return json.loads(path.read_text())


def read_log(folder: str | Path) -> list[dict[str, Any]]:
    """The training log of an expert, a router or a student (``folder/log.jsonl``, or that file):
    one dict per line with ``step``, ``loss`` (mean since the previous line), ``lr``,
    ``images_per_s`` and ``elapsed_s``, in step order."""
    from hetdiff.training.loop import LOG_NAME

    path = Path(folder)
    path = path / LOG_NAME if path.is_dir() else path
    if not path.is_file():
        raise HetdiffError(f"training log {path} does not exist; train into that folder first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if "step" in row and "loss" in row]
