"""One expert's training as serialized settings: the entry ``hetdiff train-expert`` and the
pipeline both call.

An ``ExpertJob`` names the data, the expert's ``ExpertSettings`` and where the result goes; it
round-trips through JSON, so ``hetdiff run`` starts each expert as
``python -m hetdiff.training.jobs expert-k/job.json`` in its own process, and the command line
builds the same job from its flags. ``run_expert_job`` loads the data (encoded into an
autoencoder's latents, restricted to one cluster of a partition), then trains the expert from
scratch (``training.expert.train_expert``) or fine-tunes a checkpoint
(``training.finetune.finetune_expert``) and returns the checkpoint path.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hetdiff.config import ExpertSettings
from hetdiff.errors import HetdiffError


@dataclass(frozen=True)
class ExpertJob:
    """Everything one expert's training needs, as plain values (paths as strings)."""

    data: str  # data set spec, e.g. "mnist5k+animal-mnist" (hetdiff.data.datasets)
    out: str  # output folder: out/expert.safetensors, out/log.jsonl, out/train_state/
    settings: ExpertSettings = field(default_factory=ExpertSettings)
    resolution: int | None = None  # image side; None = the data's native side
    partition: str | None = None  # partition manifest (hetdiff cluster); goes with cluster
    cluster: int | None = None  # train on this cluster of the partition only
    resume: bool = False  # continue an interrupted run of the same job exactly
    init: str | None = None  # fine-tune this flow (or converted) checkpoint with the flow loss
    init_model: str | None = None  # with init: refuse a checkpoint not of this named DiT config
    autoencoder: str | None = None  # diffusers AutoencoderKL folder: train in its latents
    cache_dir: str | None = None  # caption embeddings (and latents); None = the default cache
    allow_lr_change: bool = False  # with resume: continue with settings.lr (after a divergence)
    stream: bool = False  # read the shard spec `data` as a stream (hetdiff.training.stream)
    shuffle_buffer: int | None = None  # with stream: buffer samples; None = StreamSettings'
    decode_workers: int | None = None  # with stream: decoding threads; None = StreamSettings'
    state_url: str | None = None  # mirror out/train_state to this store folder (state_mirror)

    def __post_init__(self) -> None:
        for name in ("data", "out"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise HetdiffError(f"ExpertJob.{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.settings, ExpertSettings):
            raise HetdiffError(
                f"ExpertJob.settings must be ExpertSettings, got {type(self.settings).__name__}"
            )
        for name in ("resolution", "cluster", "shuffle_buffer", "decode_workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise HetdiffError(f"ExpertJob.{name} must be an integer or null, got {value!r}")
        for name in ("partition", "init", "init_model", "autoencoder", "cache_dir", "state_url"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise HetdiffError(f"ExpertJob.{name} must be a string or null, got {value!r}")
        for name in ("resume", "allow_lr_change", "stream"):
            if not isinstance(getattr(self, name), bool):
                raise HetdiffError(
                    f"ExpertJob.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if (self.partition is None) != (self.cluster is None):
            raise HetdiffError("--partition and --cluster go together: give both or neither")
        if self.init_model is not None and self.init is None:
            raise HetdiffError("ExpertJob.init_model applies to a job with init; drop it")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``settings`` as ``ExpertSettings.to_dict()``; ``state_url`` only
        when set (a local job's JSON is what it was before the field existed)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["settings"] = self.settings.to_dict()
        if self.state_url is None:
            del values["state_url"]
        return values

    def to_json(self) -> str:
        """Indented, key-sorted JSON; ``from_json`` reads it back to an equal job."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Any) -> ExpertJob:
        """Build and check a job; unknown or missing keys are one-line errors naming them."""
        if not isinstance(values, dict):
            raise HetdiffError(f"an expert job must be a JSON object, got {type(values).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise HetdiffError(f"unknown expert job keys {unknown}; known keys: {names}")
        missing = [name for name in ("data", "out") if name not in values]
        if missing:
            raise HetdiffError(f"expert job is missing required keys {missing}")
        values = dict(values)
        if "settings" in values:
            values["settings"] = ExpertSettings.from_dict(values["settings"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ExpertJob:
        """Parse ``to_json`` output (one-line errors for bad JSON or bad values)."""
        try:
            values = json.loads(text)
        except ValueError as err:
            raise HetdiffError(f"expert job is not valid JSON ({err})") from None
        return cls.from_dict(values)

    @classmethod
    def read(cls, path: str | Path) -> ExpertJob:
        """The job in the JSON file at ``path``."""
        path = Path(path)
        if not path.is_file():
            raise HetdiffError(f"expert job file {path} does not exist")
        try:
            return cls.from_json(path.read_text())
        except HetdiffError as err:
            raise HetdiffError(f"{path}: {err}") from None


def _load_data(job: ExpertJob) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
    """(the expert's data set: pixels or latents, of one cluster when the job names one; its
    cluster fields for the spec; the autoencoder's dict or None)."""
    from hetdiff.data.datasets import load_dataset

    autoencoder = None
    if job.autoencoder is not None:
        from hetdiff.models.autoencoder import load_autoencoder
        from hetdiff.training.latents import encode_dataset

        autoencoder = load_autoencoder(job.autoencoder)
        pixels = load_dataset(job.data, resolution=job.resolution, channels=autoencoder.in_channels)
        dataset = encode_dataset(pixels, autoencoder, job.cache_dir)
    else:
        dataset = load_dataset(job.data, resolution=job.resolution)
    recorded = None if autoencoder is None else autoencoder.to_dict()
    if job.partition is None:
        return dataset, {}, recorded
    from hetdiff.data.partition import Partition

    partition = Partition.load(job.partition)
    partition.check_dataset(dataset)
    cluster = {
        "cluster_id": job.cluster,
        "num_clusters": partition.k,
        "partition_fingerprint": partition.fingerprint,
    }
    return dataset.subset(partition.ids_of(job.cluster)), cluster, recorded


def run_expert_job(job: ExpertJob) -> Path:
    """Train the expert ``job`` describes; return ``job.out/expert.safetensors``.

    Prints what trains and on how many images, and the resolved settings as one JSON line, then
    trains from scratch, or fine-tunes ``job.init`` with the flow loss (architecture and
    objective kept). One-line HetdiffErrors for bad data, partitions or checkpoints.

    With ``job.state_url`` the job first brings ``out/train_state`` up to the committed state in
    the store when that one is newer (``training.state_mirror.pull_state``: the newest committed
    step wins, a tie keeps the local one), then resumes exactly when a committed state is there
    (``job.resume`` is decided anew), and uploads every committed state it saves.
    """
    if job.state_url is not None:
        from hetdiff.training.loop import STATE_DIRNAME
        from hetdiff.training.state_mirror import pull_state

        resume = pull_state(Path(job.out) / STATE_DIRNAME, job.state_url)
        job = dataclasses.replace(job, resume=resume)
    if job.stream:
        from hetdiff.training.stream import run_streamed_job

        return run_streamed_job(job)
    dataset, cluster, autoencoder = _load_data(job)
    s = job.settings
    print(
        f"training {s.objective} expert ({s.prediction}) on {len(dataset)} images of "
        f"{job.data} at {dataset.resolution}px -> {job.out}"
    )
    print(json.dumps({"settings": s.to_dict(), "data": job.data, **cluster}, default=str))
    if job.init is not None:
        from hetdiff.training.finetune import finetune_expert

        path = finetune_expert(
            job.init, dataset, s, job.out, resume=job.resume, model=job.init_model,
            allow_lr_change=job.allow_lr_change, state_url=job.state_url, **cluster,
        )  # fmt: skip
    else:
        from hetdiff.training.expert import train_expert

        path = train_expert(
            dataset, s, job.out, resume=job.resume, autoencoder=autoencoder,
            cache_dir=job.cache_dir, allow_lr_change=job.allow_lr_change,
            state_url=job.state_url, **cluster,
        )  # fmt: skip
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m hetdiff.training.jobs JOB.json``: run one job; a HetdiffError is printed as
    one line (``hetdiff: error: ...``) with exit status 2, as the ``hetdiff`` command does."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m hetdiff.training.jobs JOB.json", file=sys.stderr)
        return 2
    try:
        run_expert_job(ExpertJob.read(argv[0]))
    except HetdiffError as err:
        print(f"hetdiff: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hetdiff: interrupted; finished artifacts are kept, rerun to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
