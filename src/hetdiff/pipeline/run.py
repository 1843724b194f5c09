"""``hetdiff run``: cluster -> K isolated experts -> router -> sample -> evaluate -> report.

Each stage writes its outputs in the run folder and a marker ``stages/<name>.json`` holding the
hash of the config values it depends on (``STAGE_INPUTS``); a stage whose marker matches is
skipped, so a killed run resumes where it stopped (an expert killed mid-training resumes from its
last checkpoint). Each expert trains in its own process (``hetdiff.training.jobs``, started with
its serialized settings) on its own shard and writes only its own folder: nothing passes between
experts.

With ``text_encoder`` set the run is caption-conditioned: every expert and the router train on
each image's caption (``hetdiff.data.captions``) instead of its class label, the sample stage also
writes one grid per prompt (``samples/prompt-<i>.png``, listed in ``samples/prompts.json``), and
the strategy samples are drawn with captions of the data.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from hetdiff.config import LAUNCHERS, RunConfig
from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_write_json
from hetdiff.pipeline.layout import RunLayout

STAGES = ("cluster", "experts", "router", "sample", "evaluate", "report")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# What each stage reads from the config, beyond what the stages it builds on read: a stage
# re-runs exactly when one of these (or an upstream stage's) inputs changes.
_CLUSTER_INPUTS = ("data", "resolution", "seed", "cluster")
_CONDITION_INPUTS = ("class_conditional", "text_encoder")
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "cluster": _CLUSTER_INPUTS,
    "experts": (*_CLUSTER_INPUTS, *_CONDITION_INPUTS, "experts"),
    "router": (*_CLUSTER_INPUTS, *_CONDITION_INPUTS, "router"),
    "sample": (*_CLUSTER_INPUTS, *_CONDITION_INPUTS, "experts", "router", "sample", "sample_count"),
    "evaluate": (
        *_CLUSTER_INPUTS,
        *_CONDITION_INPUTS,
        "experts",
        "router",
        "sample",
        "sample_count",
        "evaluate",
    ),  # fmt: skip
}
STAGE_INPUTS["report"] = STAGE_INPUTS["evaluate"]
_PLACEMENT_KEYS = ("resources",)  # config keys that say where, not what: changeable on a rerun
# Settings added after run folders already existed. At their default they are left out of the
# stage keys and the folder check, so a folder written by an earlier hetdiff resumes as it was.
_ADDED_DEFAULTS = {
    "experts": {"gradient_checkpointing": False, "min_snr_gamma": None},
    "router": {"arch": "film", "size": "tiny"},
    "sample": {"top_p": 0.9, "per_class": 8},
}
# Settings that say how fast, not what: left out of the stage keys and the folder check at any
# value, so turning one on or off keeps every stage (an expert resumes with it toggled).
_SPEED_FIELDS = {"experts": ("compile",), "sample": ("compile",)}


def _entries(config: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """The dict entries of ``config[section]`` (one table or a list of them, e.g. experts)."""
    entries = config.get(section)
    return [e for e in (entries if isinstance(entries, list) else [entries]) if isinstance(e, dict)]


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a ``RunConfig.to_dict()``) without the added settings at their defaults and
    without the speed settings."""
    config = json.loads(json.dumps(config))
    for section, names in _SPEED_FIELDS.items():
        for entry in _entries(config, section):
            for name in names:
                entry.pop(name, None)
    for section, defaults in _ADDED_DEFAULTS.items():
        for entry in _entries(config, section):
            for name, default in defaults.items():
                if entry.get(name, default) == default:
                    entry.pop(name, None)
    return config


def _log(message: str) -> None:
    print(f"[hetdiff run {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Run:
    """One run folder and its config."""

    def __init__(
        self,
        config: RunConfig,
        out: str | Path,
        launcher: str = "local",
        allow_missing: bool = False,
    ) -> None:
        """``launcher``: where the experts train (``hetdiff.config.LAUNCHERS``);
        ``allow_missing``: an expert that fails for good is reported and left out of the
        ensemble (the router renormalized over the experts present) instead of stopping."""
        if launcher not in LAUNCHERS:
            raise HetdiffError(f"unknown launcher {launcher!r}; use {', '.join(LAUNCHERS)}")
        from hetdiff.pipeline.run_store import open_run_root

        self.config = config
        self.out, self.store = open_run_root(out)  # a URL root works in a local mirror
        self.layout = RunLayout(self.out)
        self.launcher = launcher
        self.allow_missing = allow_missing
        self.missing: list[int] = []
        self._dataset = None

    # -- folders (named once, in RunLayout) ----------------------------------------------------

    @property
    def partition_path(self) -> Path:
        return self.layout.partition

    @property
    def experts_dir(self) -> Path:
        return self.layout.experts

    def expert_dir(self, k: int) -> Path:
        return self.layout.expert(k)

    @property
    def router_dir(self) -> Path:
        return self.layout.router

    @property
    def samples_dir(self) -> Path:
        return self.layout.samples

    @property
    def dataset(self):
        if self._dataset is None:
            from hetdiff.data.datasets import load_dataset

            self._dataset = load_dataset(self.config.data, resolution=self.config.resolution)
        return self._dataset

    # -- stage bookkeeping ----------------------------------------------------------------------

    def _marker(self, stage: str) -> Path:
        return self.layout.marker(stage)

    @property
    def prompts(self) -> list[str]:
        """The prompts of a text run: ``sample.prompts``, else one per class (at most 8)."""
        from hetdiff.data.captions import default_prompts

        if self.config.sample.prompts:
            return list(self.config.sample.prompts)
        return default_prompts(self.dataset.class_names)

    def stage_key(self, stage: str) -> str:
        """Hash of the config values ``stage`` depends on (``STAGE_INPUTS``)."""
        c = _comparable(self.config.to_dict())
        c["sample_count"] = max(self.config.sample.n, self.config.evaluate.n)  # drawn per model
        return _hash({"stage": stage, **{name: c[name] for name in STAGE_INPUTS[stage]}})

    def done(self, stage: str) -> bool:
        marker = self._marker(stage)
        if not marker.is_file():
            return False
        info = json.loads(marker.read_text())  # missing experts: a rerun tries them again
        return info.get("key") == self.stage_key(stage) and not info.get("missing")

    def mark(self, stage: str, **info: Any) -> None:
        atomic_write_json(self._marker(stage), {"key": self.stage_key(stage), **info})

    # -- the run --------------------------------------------------------------------------------

    def check_folder(self) -> None:
        """Refuse a folder that holds another run's artifacts (before any work starts)."""
        saved = self.layout.config
        if saved.is_file():
            previous = _comparable(json.loads(saved.read_text()))
            current = _comparable(self.config.to_dict())
            for key in _PLACEMENT_KEYS:  # where experts train does not change what they are
                previous.pop(key, None)
                current.pop(key, None)
            if previous != current:
                differing = sorted(k for k in current if previous.get(k) != current.get(k))
                raise HetdiffError(
                    f"{self.out} holds another run (config differs in {', '.join(differing)}); "
                    "pass a new --out or delete that folder"
                )
        elif self.out.is_dir() and any(self.out.iterdir()):
            raise HetdiffError(
                f"{self.out} is not empty and holds no hetdiff run; pass a new --out"
            )

    def execute(self) -> dict[str, Any]:
        if self.store is not None:
            _log(f"artifact root {self.store.url}, work folder {self.out}")
            self.store.pull(log=_log)
        self.check_folder()
        self.out.mkdir(parents=True, exist_ok=True)
        resolved = self.config.to_dict()
        atomic_write_json(self.layout.config, resolved)
        self.push()
        print(json.dumps(resolved, indent=2))
        started = time.time()
        timings = {}
        for stage in STAGES:
            if self.done(stage):
                _log(f"stage {stage}: done before, skipped")
                continue
            t0 = time.time()
            _log(f"stage {stage}: start")
            try:
                getattr(self, f"stage_{stage}")()
                timings[stage] = round(time.time() - t0, 1)
                missing = {"missing": self.missing} if stage == "experts" and self.missing else {}
                self.mark(stage, seconds=timings[stage], **missing)
            finally:  # what a stage finished reaches the store even when a later part failed
                self.push()
            _log(f"stage {stage}: finished in {timings[stage]} s")
        _log(f"run finished in {time.time() - started:.0f} s: {self.layout.report}")
        return json.loads(self.layout.metrics.read_text())

    def push(self) -> None:
        """Upload what changed to the run's artifact root when it is a URL (``run_store``)."""
        if self.store is not None:
            self.store.push(log=_log)

    # -- stages ---------------------------------------------------------------------------------

    def stage_cluster(self) -> None:
        from hetdiff.data.montage import montage_rows
        from hetdiff.data.partition import cluster_dataset, random_partition
        from hetdiff.pipeline.cluster import MONTAGE_PER_ROW, cluster_montage_rows

        c = self.config.cluster
        if c.random:
            partition = random_partition(self.dataset, c.k, seed=self.config.seed)
        else:
            partition = cluster_dataset(
                self.dataset, c.k, c.fine, c.features, self.config.seed, c.balanced
            )
        partition.save(str(self.partition_path))
        rows = cluster_montage_rows(partition, self.dataset, MONTAGE_PER_ROW, self.config.seed)
        montage_rows(rows, str(self.layout.clusters_montage))  # as `hetdiff cluster` picks them
        _log(f"cluster sizes: {list(partition.sizes)}")

    def stage_experts(self) -> None:
        """Train every expert as its own job on the run's launcher (``hetdiff.launch``; the
        local launcher runs ``workers`` processes at a time here, Slurm and Ray each expert
        where its ``resources`` say), following jobs an earlier run submitted
        (``pipeline.expert_jobs.launch_experts``); with ``allow_missing`` experts that fail
        are named and the run goes on without them."""
        from hetdiff.pipeline.expert_jobs import launch_experts

        self.missing = launch_experts(
            self.config, self.layout, self.launcher, range(len(self.config.experts)),
            self.allow_missing, log=_log, store_url=None if self.store is None else self.store.url,
        )  # fmt: skip

    def stage_router(self) -> None:
        import dataclasses

        from hetdiff.data.partition import Partition
        from hetdiff.training.router import train_router

        # the run's seed; no progress bar inside `hetdiff run` (as for the experts)
        settings = dataclasses.replace(self.config.router, seed=self.config.seed, progress=False)
        resume, state_url = _has_committed_state(self.router_dir), None
        if self.store is not None:  # a URL root: its state mirrored as each expert's is
            from hetdiff.training.loop import STATE_DIRNAME
            from hetdiff.training.state_mirror import pull_state

            state_url = f"{self.store.url}/{self.layout.state_key(self.router_dir)}"
            resume = pull_state(self.router_dir / STATE_DIRNAME, state_url, log=_log)
        train_router(
            self.dataset,
            Partition.load(str(self.partition_path)),
            self.router_dir,
            settings,
            class_conditional=self.config.class_conditional,
            text_encoder=self.config.text_encoder,
            resume=resume,
            state_url=state_url,
        )

    def stage_sample(self) -> None:
        """``n`` samples per strategy and per expert (``pipeline.samples.draw_samples``), saved as
        ``samples/<name>.safetensors`` with a grid ``samples/<name>.png`` of the first
        ``sample.n``, and each strategy's samples by class (``pipeline.class_rows``); text runs
        also write one grid per prompt."""
        from hetdiff.data.montage import save_grid
        from hetdiff.pipeline.class_rows import write_class_rows
        from hetdiff.pipeline.samples import draw_samples
        from hetdiff.sampling.files import save_samples

        s = self.config.sample
        n = max(s.n, self.config.evaluate.n)
        drawn = draw_samples(
            self.experts_dir, self.router_dir, self.dataset, s, n, self.config.seed, log=_log,
            allow_missing=self.allow_missing,
        )  # fmt: skip
        named = [*drawn.strategies.items()]
        named += [(f"expert-{k}", samples) for k, samples in sorted(drawn.experts.items())]
        for name, samples in named:
            save_grid(samples.images[: s.n].clamp(-1, 1), str(self.samples_dir / f"{name}.png"))
            save_samples(self.samples_dir / f"{name}.safetensors", samples)
        if drawn.router_weights is not None:
            atomic_write_json(self.samples_dir / "router_weights.json", drawn.router_weights)
        write_class_rows(self.samples_dir, drawn.strategies, self.dataset.class_names, s.per_class)
        if self.config.text_encoder is not None:
            shape = (self.dataset.channels, self.config.resolution, self.config.resolution)
            self._sample_prompts(shape)

    def _sample_prompts(self, shape: tuple[int, int, int]) -> None:
        """One grid per prompt from the first strategy, the same seeds for every prompt; the
        prompts and their files go to ``samples/prompts.json``."""
        from hetdiff.data.montage import save_grid
        from hetdiff.models.text import encode_prompts, load_text_encoder
        from hetdiff.sampling.ensemble import load_ensemble
        from hetdiff.sampling.generate import generate

        s = self.config.sample
        strategy = s.strategies[0]
        ens = load_ensemble(
            self.experts_dir, self.router_dir, strategy=strategy, top_k=s.top_k,
            seed=self.config.seed, top_p=s.top_p,
        )  # fmt: skip
        if s.compile:
            from hetdiff.sampling.compiled import compile_for_sampling

            compile_for_sampling(ens)
        encoder = load_text_encoder(self.config.text_encoder)
        seeds = list(range(20_000, 20_000 + s.per_prompt))
        entries = []
        for i, prompt in enumerate(self.prompts):
            t0 = time.time()
            cond = encode_prompts(encoder, [prompt] * s.per_prompt)
            images = generate(ens, shape, seeds, s.steps, s.solver, None, s.cfg, cond=cond)
            name = f"prompt-{i}.png"
            save_grid(images.clamp(-1, 1), str(self.samples_dir / name), nrow=min(8, len(seeds)))
            entries.append({"prompt": prompt, "file": name})
            _log(f"sampled {len(seeds)} images for {prompt!r} in {time.time() - t0:.1f} s")
        atomic_write_json(
            self.samples_dir / "prompts.json", {"strategy": strategy, "prompts": entries}
        )

    def stage_evaluate(self) -> None:
        from hetdiff.data.partition import Partition
        from hetdiff.pipeline.evaluate import evaluate_saved_samples

        cfg = self.config
        metrics = evaluate_saved_samples(
            self.samples_dir, self.experts_dir, self.router_dir, self.dataset,
            Partition.load(str(self.partition_path)), cfg.evaluate, cfg.sample, cfg.seed,
        )  # fmt: skip
        atomic_write_json(self.layout.metrics, {**metrics, "config": cfg.to_dict()})

    def stage_report(self) -> None:
        from hetdiff.pipeline.artifacts import run_record
        from hetdiff.report.html import write_report

        write_report(run_record(self.config, self.layout), self.layout.report)


def _has_committed_state(folder: Path) -> bool:
    """Whether ``folder/train_state`` holds a committed (verified) checkpoint to resume."""
    from hetdiff.launch import committed_state

    return committed_state(folder)
