"""``hetdiff run``: cluster -> K isolated experts -> router -> sample -> evaluate -> report.

Each stage writes its outputs in the run folder and a marker ``stages/<name>.json`` holding the
hash of everything it depends on; a stage whose marker matches is skipped, so a killed run resumes
where it stopped (an expert killed mid-training resumes from its last checkpoint). Each expert
trains in its own process (``hetdiff train-expert``) on its own shard and writes only its own
folder: nothing passes between experts.

With ``text_encoder`` set the run is caption-conditioned: every expert and the router train on
each image's caption (``hetdiff.data.captions``) instead of its class label, the sample stage also
writes one grid per prompt (``samples/prompt-<i>.png``, listed in ``samples/prompts.json``), and
the strategy samples are drawn with captions of the data. Without it the config keys for text
are left out of the stage keys, so run folders made before they existed stay valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hetdiff.config import RunConfig
from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_write_json

STAGES = ("cluster", "experts", "router", "sample", "evaluate", "report")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _comparable(c: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the text keys while ``text_encoder`` is unset: what a run folder
    recorded before text runs existed, so its stage keys and config.json still match."""
    if c.get("text_encoder") is not None:
        return c
    c = {key: value for key, value in c.items() if key != "text_encoder"}
    if isinstance(c.get("sample"), dict):
        c["sample"] = {k: v for k, v in c["sample"].items() if k not in ("prompts", "per_prompt")}
    return c


def _log(message: str) -> None:
    print(f"[hetdiff run {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Run:
    """One run folder and its config."""

    def __init__(self, config: RunConfig, out: str | Path) -> None:
        self.config = config
        self.out = Path(out)
        self._dataset = None

    # -- folders --------------------------------------------------------------------------------

    @property
    def partition_path(self) -> Path:
        return self.out / "partition.json"

    @property
    def experts_dir(self) -> Path:
        return self.out / "experts"

    def expert_dir(self, k: int) -> Path:
        return self.experts_dir / f"expert-{k}"

    @property
    def router_dir(self) -> Path:
        return self.out / "router"

    @property
    def samples_dir(self) -> Path:
        return self.out / "samples"

    @property
    def dataset(self):
        if self._dataset is None:
            from hetdiff.data.datasets import load_dataset

            self._dataset = load_dataset(self.config.data, resolution=self.config.resolution)
        return self._dataset

    # -- stage bookkeeping ----------------------------------------------------------------------

    def _marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    @property
    def prompts(self) -> list[str]:
        """The prompts of a text run: ``sample.prompts``, else one per class (at most 8)."""
        from hetdiff.data.captions import default_prompts

        if self.config.sample.prompts:
            return list(self.config.sample.prompts)
        return default_prompts(self.dataset.class_names)

    def stage_key(self, stage: str) -> str:
        c = _comparable(self.config.to_dict())
        parts: dict[str, Any] = {
            "data": c["data"],
            "resolution": c["resolution"],
            "seed": c["seed"],
        }
        parts["cluster"] = c["cluster"]
        if stage in ("experts", "router", "sample", "evaluate", "report"):
            parts["experts"] = c["experts"]
            parts["class_conditional"] = c["class_conditional"]
            if "text_encoder" in c:
                parts["text_encoder"] = c["text_encoder"]
        if stage in ("router", "sample", "evaluate", "report"):
            parts["router"] = c["router"]
        if stage in ("sample", "evaluate", "report"):
            parts["sample"] = c["sample"]
        if stage in ("evaluate", "report"):
            parts["evaluate"] = c["evaluate"]
        return _hash({"stage": stage, **parts})

    def done(self, stage: str) -> bool:
        marker = self._marker(stage)
        if not marker.is_file():
            return False
        return json.loads(marker.read_text()).get("key") == self.stage_key(stage)

    def mark(self, stage: str, **info: Any) -> None:
        atomic_write_json(self._marker(stage), {"key": self.stage_key(stage), **info})

    # -- the run --------------------------------------------------------------------------------

    def check_folder(self) -> None:
        """Refuse a folder that holds another run's artifacts (before any work starts)."""
        saved = self.out / "config.json"
        if saved.is_file():
            previous = _comparable(json.loads(saved.read_text()))
            current = _comparable(json.loads(json.dumps(self.config.to_dict())))
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
        self.check_folder()
        self.out.mkdir(parents=True, exist_ok=True)
        resolved = self.config.to_dict()
        atomic_write_json(self.out / "config.json", resolved)
        print(json.dumps(resolved, indent=2))
        started = time.time()
        timings = {}
        for stage in STAGES:
            if self.done(stage):
                _log(f"stage {stage}: done before, skipped")
                continue
            t0 = time.time()
            _log(f"stage {stage}: start")
            getattr(self, f"stage_{stage}")()
            timings[stage] = round(time.time() - t0, 1)
            self.mark(stage, seconds=timings[stage])
            _log(f"stage {stage}: finished in {timings[stage]} s")
        _log(f"run finished in {time.time() - started:.0f} s: {self.out / 'report.html'}")
        return json.loads((self.out / "metrics.json").read_text())

    # -- stages ---------------------------------------------------------------------------------

    def stage_cluster(self) -> None:
        from hetdiff.data.montage import montage_rows
        from hetdiff.data.partition import cluster_dataset, random_partition

        c = self.config.cluster
        if c.random:
            partition = random_partition(self.dataset, c.k, seed=self.config.seed)
        else:
            partition = cluster_dataset(
                self.dataset, c.k, c.fine, c.features, self.config.seed, c.balanced
            )
        partition.save(str(self.partition_path))
        rows = []
        for k in range(c.k):
            ids = partition.ids_of(k)[:12]
            rows.append(self.dataset.subset(ids).images)
        montage_rows(rows, str(self.out / "clusters.png"))
        _log(f"cluster sizes: {list(partition.sizes)}")

    def stage_experts(self) -> None:
        """Train every expert in its own process, up to ``workers`` at a time."""
        pending = list(range(len(self.config.experts)))
        running: list[tuple[int, subprocess.Popen, Any]] = []
        threads = max(1, (os.cpu_count() or 1) // self.config.workers)
        failures = []
        while pending or running:
            while pending and len(running) < self.config.workers:
                k = pending.pop(0)
                if self._expert_finished(k):
                    _log(f"expert {k}: finished before, kept")
                    continue
                running.append(self._launch_expert(k, threads))
            for item in list(running):
                k, proc, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                log.close()
                if proc.returncode != 0:
                    tail = (self.expert_dir(k) / "stdout.log").read_text().strip().splitlines()
                    failures.append(f"expert {k}: {tail[-1] if tail else 'failed'}")
                else:
                    _log(f"expert {k}: trained")
            time.sleep(0.2)
        if failures:
            raise HetdiffError("; ".join(failures) + f" (logs in {self.experts_dir})")

    def _expert_finished(self, k: int) -> bool:
        from hetdiff.experts.store import read_spec

        ckpt = self.expert_dir(k) / "expert.safetensors"
        if not ckpt.is_file():
            return False
        try:
            return read_spec(ckpt).steps >= self.config.experts[k].steps
        except HetdiffError:
            return False

    def _launch_expert(self, k: int, threads: int):
        e = self.config.experts[k]
        folder = self.expert_dir(k)
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "hetdiff", "train-expert",
            "--data", self.config.data, "--resolution", str(self.config.resolution),
            "--objective", e.objective, "--prediction", e.prediction,
            "--model", e.model, "--steps", str(e.steps), "--batch-size", str(e.batch_size),
            "--lr", str(e.lr), "--seed", str(self.config.seed + k),
            "--checkpoint-every", str(max(1, e.steps // 4)),
            "--partition", str(self.partition_path), "--cluster", str(k),
            "--out", str(folder), "--no-progress",
        ]  # fmt: skip
        if e.objective == "ddpm":
            cmd += ["--schedule", e.schedule or "linear"]
        if self.config.text_encoder is not None:
            cmd += ["--text-encoder", self.config.text_encoder]
        elif not self.config.class_conditional:
            cmd.append("--unconditional")
        if (folder / "train_state").is_dir():
            cmd.append("--resume")
            _log(f"expert {k}: resuming from its last checkpoint")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        log = open(folder / "stdout.log", "a")
        _log(
            f"expert {k}: {e.objective}/{e.prediction} {e.schedule or ''} training in its own process"
        )
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
        return k, proc, log

    def stage_router(self) -> None:
        from hetdiff.data.partition import Partition
        from hetdiff.models.router import RouterConfig as RouterNetConfig
        from hetdiff.models.router import train_router
        from hetdiff.training.loop import TrainConfig

        partition = Partition.load(str(self.partition_path))
        ds = self.dataset
        text = self.config.text_encoder
        num_classes = ds.num_classes if self.config.class_conditional else 0
        net_config = RouterNetConfig(
            partition.k, ds.resolution, ds.channels, num_classes=num_classes
        )
        if text is not None:  # train_router sizes a text router for its encoder's tokens
            net_config = None
        r = self.config.router
        train_router(
            ds,
            partition,
            r.steps,
            self.router_dir,
            config=net_config,
            train_config=TrainConfig(
                steps=r.steps,
                batch_size=r.batch_size,
                lr=r.lr,
                warmup_steps=min(50, r.steps),
                checkpoint_every=max(1, r.steps // 2),
                seed=self.config.seed,
                progress=False,
            ),
            resume=(self.router_dir / "train_state").is_dir(),
            text_encoder=text,
        )

    def stage_sample(self) -> None:
        from safetensors.torch import save_file

        from hetdiff.data.montage import save_grid
        from hetdiff.experts.build import load_velocity_model
        from hetdiff.io import atomic_path
        from hetdiff.sampling.ensemble import load_ensemble
        from hetdiff.sampling.generate import draw_conditions, generate

        s = self.config.sample
        text = self.config.text_encoder
        shape = (self.dataset.channels, self.config.resolution, self.config.resolution)
        n = max(s.n, self.config.evaluate.n)
        seeds = list(range(10_000, 10_000 + n))
        # text runs sample with the drawn rows' captions and keep their labels for the metrics
        labels, captions = draw_conditions(
            self.dataset, n, self.config.seed, text, self.config.class_conditional
        )
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        # (name, velocity, labels to sample with and store, captions to sample with, cfg)
        jobs: list[tuple[str, Any, torch.Tensor | None, Any, float]] = []
        for strategy in s.strategies:
            ens = load_ensemble(
                self.experts_dir, self.router_dir, strategy=strategy, top_k=s.top_k,
                seed=self.config.seed, record=strategy == "full",
            )  # fmt: skip
            jobs.append((strategy, ens, labels, captions, s.cfg))
        for k in range(len(self.config.experts)):
            velocity, _ = load_velocity_model(self.expert_dir(k) / "expert.safetensors")
            if text is not None:  # each expert alone, unconditional (the null caption)
                jobs.append((f"expert-{k}", velocity, None, None, 1.0))
                continue
            null = None if labels is None else torch.full_like(labels, -1)
            jobs.append((f"expert-{k}", velocity, null, None, s.cfg))
        for name, velocity, lab, cond, cfg in jobs:
            t0 = time.time()
            images = generate(
                velocity, shape, seeds, s.steps, s.solver, None if cond is not None else lab,
                cfg, cond=cond,
            )  # fmt: skip
            _log(f"sampled {n} images with {name} in {time.time() - t0:.1f} s")
            save_grid(images[: s.n].clamp(-1, 1), str(self.samples_dir / f"{name}.png"))
            tensors = {"images": images.float().contiguous()}
            if lab is not None:
                tensors["labels"] = lab.contiguous()
            with atomic_path(self.samples_dir / f"{name}.safetensors") as tmp:
                save_file(tensors, str(tmp))
            if getattr(velocity, "recorded", None):
                # router weights over t for the first 4 samples (the full strategy records them)
                t_values = [float(t[0]) for t, _ in velocity.recorded]
                weights = [w[:4].tolist() for _, w in velocity.recorded]
                atomic_write_json(self.samples_dir / "router_weights.json",
                                  {"t": t_values, "weights": weights})  # fmt: skip
        if text is not None:
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
            seed=self.config.seed,
        )  # fmt: skip
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
        from hetdiff.metrics.evaluate import evaluate_run

        metrics = evaluate_run(self)
        atomic_write_json(self.out / "metrics.json", metrics)

    def stage_report(self) -> None:
        from hetdiff.report.html import write_report

        write_report(self)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGKILL when the pipeline dies, so no orphan keeps training."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def load_samples(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return tensors["images"], tensors.get("labels")
