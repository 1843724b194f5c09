"""The machinery of ``benchmarks/evidence.py``: a cache of trained models and evaluations keyed by
their full settings, resumable training through the library, judged evaluation, progress lines
and a running estimate of the time left.

Layout under the cache folder (``--cache``)::

    partitions/<kind>-<key>.json         feature clusters or a random partition (Partition.save)
    routers/<kind>-<key>/router.safetensors   one router per partition (hetdiff.api.train_router)
    models/<key>/train/                  the training folder (hetdiff.api.train_expert: the
                                         expert, log.jsonl, train_state/ for resume)
    models/<key>/step-<S>.safetensors  the EMA weights after S steps (a copy) + .json
    converted/<model>-<adapter|rehead>.safetensors  a DDPM expert converted for flow
    evals/<key>.json                     one evaluation's metrics (+ .safetensors: its samples)

A model's key covers the data, resolution, every ``ExpertSettings`` field but ``steps`` (and
``checkpoint_every``/``progress``), the partition's key, the cluster and the init checkpoint;
its step count is in the snapshot's name. Snapshots of one key are taken from one growing
training run: the loop's learning rate is constant after warmup and its batches and noise are
seeded by (seed, epoch) and (seed, step), so resuming a run finished at S1 up to S2 steps gives
the same weights as a run trained to S2 directly (``hetdiff.training.loop``, module docstring).
Every file is written atomically (temporary file + rename): a killed run leaves finished
snapshots and evaluations, and the training folder resumes from its last checkpoint.

Planning and progress lines: ``benchmarks/evidence_plan.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from evidence_plan import Pending, Progress, digest, settings_key
from hetdiff.config import ClusterSettings, EvalSettings, ExpertSettings, RouterSettings
from hetdiff.data.datasets import load_dataset
from hetdiff.io import atomic_path, atomic_write_text
from hetdiff.metrics.flops import forward_flops, solver_nfe
from hetdiff.metrics.judged import judged_metrics, judged_reference
from hetdiff.sampling.generate import draw_conditions, generate

FIRST_SEED = 10_000  # sample i of every evaluated model starts from seeded_noise(FIRST_SEED + i)
CHECKPOINT_EVERY = 500  # steps between resumable training states
FLOPS_SAMPLES = 8  # samples whose generation is FLOP-counted for the per-sample sampling cost
ROUTER_FLOPS = 5e6  # approximate forward FLOPs of one router image (planning only)


@dataclass(frozen=True)
class PartitionRef:
    kind: str  # "features" | "random"
    key: str
    path: Path


class Lab:
    """One evidence run: its arguments, data, cache, plan and progress."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.cache = Path(args.cache)
        self.dataset = load_dataset(args.data, resolution=args.resolution)
        self.shape = (self.dataset.channels, self.dataset.resolution, self.dataset.resolution)
        self.labels, _ = draw_conditions(self.dataset, args.n, args.seed)
        self.seeds = list(range(FIRST_SEED, FIRST_SEED + args.n))
        self.eval_settings = EvalSettings(judge_steps=args.judge_steps, bootstrap=args.bootstrap)
        self._forward: dict[tuple[str, bool], int] = {}
        self._planned_step: dict[Path, int] = {}
        self._reference: Any = None
        self.progress = Progress()
        self.plan, self.finished, self.log = (
            self.progress.plan,
            self.progress.finished,
            self.progress.log,
        )

    @property
    def planning(self) -> bool:
        return self.progress.planning

    def begin(self) -> None:
        """End the planning pass (print the plan and its estimate): real jobs from now on."""
        self._planned_step.clear()
        self.progress.begin()

    # -- costs ---------------------------------------------------------------------------------

    def forward_flops(self, model: str, conditional: bool = True) -> int:
        """Forward FLOPs of one image through a fresh DiT ``model`` at the run's resolution."""
        key = (model, conditional)
        if key not in self._forward:
            from hetdiff.training.expert import build_expert_net

            settings = ExpertSettings(model=model, class_conditional=conditional)
            net, _ = build_expert_net(settings, self.dataset)
            x, t = torch.zeros(1, *self.shape), torch.full((1,), 500.0)
            cond = self.dataset.labels[:1] if conditional else None
            self._forward[key] = forward_flops(lambda: net(x, t, cond))
        return self._forward[key]

    def train_flops(self, model: str, steps: int, conditional: bool = True) -> float:
        """Training FLOPs: 3 x forward (forward + backward) x batch x steps."""
        return 3.0 * self.forward_flops(model, conditional) * self.args.batch * steps

    # -- partitions and routers ----------------------------------------------------------------

    def partition(self, kind: str) -> PartitionRef:
        """The K-way partition of the data: feature clusters (as ``hetdiff run`` makes them) or
        a seeded random split; made once and saved."""
        c = ClusterSettings(k=self.args.k, features=self.args.features, random=kind == "random")
        key = digest(
            {
                "data": self.args.data,
                "resolution": self.args.resolution,
                "seed": self.args.seed,
                "cluster": dataclasses.asdict(c),
            }
        )
        ref = PartitionRef(kind, key, self.cache / "partitions" / f"{kind}-{key}.json")
        if not self.planning and not ref.path.is_file():
            from hetdiff.data.partition import cluster_dataset, random_partition

            t0 = time.time()
            if c.random:
                part = random_partition(self.dataset, c.k, seed=self.args.seed)
            else:
                part = cluster_dataset(
                    self.dataset,
                    c.k,
                    c.fine,
                    c.features,
                    self.args.seed,
                    c.balanced,
                    progress=False,
                )
            ref.path.parent.mkdir(parents=True, exist_ok=True)
            part.save(str(ref.path))
            self.log(f"partition {kind}: sizes {list(part.sizes)} ({time.time() - t0:.0f} s)")
        return ref

    def router(self, part: PartitionRef) -> Path:
        """The router of ``part`` (trained once; shared by every ensemble on that partition)."""
        from hetdiff.api import train_router

        settings = RouterSettings(steps=self.args.router_steps, progress=False)
        folder = self.cache / "routers" / f"{part.kind}-{digest([part.key, settings.steps])}"
        done = folder / "done.json"
        flops = 3 * ROUTER_FLOPS * settings.batch_size * settings.steps
        if self.planning:
            self.plan("train", flops, done.is_file(), done)
            return folder / "router.safetensors"
        if not done.is_file():
            t0 = time.time()
            with open(self._log_file(folder), "a") as out, contextlib.redirect_stdout(out):
                train_router(
                    self.args.data,
                    part.path,
                    folder,
                    settings,
                    resolution=self.args.resolution,
                    resume=(folder / "train_state").is_dir(),
                )
            atomic_write_text(done, json.dumps({"seconds": time.time() - t0}))
            self.finished("train", flops, time.time() - t0, f"router ({part.kind})")
        return folder / "router.safetensors"

    @staticmethod
    def _log_file(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "stdout.log"

    # -- models --------------------------------------------------------------------------------

    def model(
        self,
        label: str,
        settings: ExpertSettings,
        steps: int,
        part: PartitionRef | None = None,
        cluster: int | None = None,
        init: Path | None = None,
        data: str | None = None,
    ) -> Path:
        """The EMA checkpoint of ``settings`` trained ``steps`` steps (on ``cluster`` of
        ``part``, from ``init`` when given), trained or resumed through ``hetdiff.api``."""
        data = data or self.args.data
        key = {
            "data": data,
            "resolution": self.args.resolution,
            "settings": settings_key(settings),
            "partition": None if part is None else part.key,
            "cluster": cluster,
            "init": None if init is None else str(init.relative_to(self.cache)),
        }
        folder = self.cache / "models" / digest(key)  # the label is only recorded
        snapshot = folder / f"step-{steps}.safetensors"
        run = folder / "train"
        at = self._step_of(run)
        if at > steps:  # the growing run is past this budget: train this one on its own
            run = folder / f"train-{steps}"
            at = self._step_of(run)
        flops = self.train_flops(settings.model, steps - at, settings.class_conditional)
        if self.planning:
            self.plan("train", flops, snapshot.is_file(), snapshot)
            if not snapshot.is_file():
                self._planned_step[run] = steps
            return snapshot
        if snapshot.is_file():
            return snapshot
        from hetdiff.api import train_expert

        t0 = time.time()
        job = dataclasses.replace(
            settings, steps=steps, progress=False, checkpoint_every=min(steps, CHECKPOINT_EVERY)
        )
        with open(self._log_file(folder), "a") as out, contextlib.redirect_stdout(out):
            trained = train_expert(
                data,
                run,
                job,
                resolution=self.args.resolution,
                partition=None if part is None else part.path,
                cluster=cluster,
                resume=(run / "train_state").is_dir(),
                init=init,
            )
        with atomic_path(snapshot) as tmp:
            shutil.copyfile(trained, tmp)
        seconds = time.time() - t0
        record = {"label": label, "key": key, "steps": steps, "from_step": at, "seconds": seconds}
        atomic_write_text(snapshot.with_suffix(".json"), json.dumps(record, indent=1))
        self.finished("train", flops, seconds, f"trained {label} to step {steps} (from {at})")
        return snapshot

    def _step_of(self, run: Path) -> int:
        """The committed step of a training folder (the planned one in the planning pass)."""
        if self.planning and run in self._planned_step:
            return self._planned_step[run]
        from hetdiff.training.state import read_manifest

        manifest = read_manifest(run / "train_state") if (run / "train_state").is_dir() else None
        return 0 if manifest is None else int(manifest["step"])

    def converted(self, source: Path, rehead: bool) -> Path:
        """``source`` (a DDPM expert) converted for flow fine-tuning, as ``hetdiff convert --to
        flow [--rehead]`` does it."""
        name = f"{source.parent.name}-{source.stem}-{'rehead' if rehead else 'adapter'}"
        path = self.cache / "converted" / f"{name}.safetensors"
        if not self.planning and not path.is_file():
            from hetdiff.experts.convert import convert_to_flow

            path.parent.mkdir(parents=True, exist_ok=True)
            convert_to_flow(source, path, rehead=rehead)
        return path

    # -- evaluation ----------------------------------------------------------------------------

    @property
    def reference(self) -> Any:
        """The judge (trained once per data set and cached) and its held-out real features,
        with the clusters of the feature partition (per-cluster FD and cluster coverage)."""
        if self._reference is None:
            from hetdiff.data.partition import Partition

            part = Partition.load(str(self.partition("features").path))
            self._reference = judged_reference(
                self.dataset, part, self.eval_settings, self.args.seed
            )
            spec = self._reference.judge.spec
            accuracy = "" if spec is None else f", held-out accuracy {spec.accuracy:.3f}"
            self.log(f"judge ready ({self._reference.judge.name}{accuracy})")
        return self._reference

    def evaluate(
        self,
        label: str,
        key: dict[str, Any],
        build: Callable[[], Any],
        model: str,
        experts_run: float = 1.0,
        conditional: bool = True,
        own_cluster: int | None = None,
    ) -> dict[str, Any]:
        """Judged metrics (``hetdiff.metrics.judged``) of n samples of ``build()`` (a velocity
        model), seeds FIRST_SEED + i, the run's labels (None when not ``conditional``), plus
        ``gflops_per_sample`` (FLOP-counted generation of FLOPS_SAMPLES samples) and
        ``samples`` (the file of the images). Cached as JSON under ``evals/``."""
        a = self.args
        cfg = a.cfg if conditional else 1.0
        full_key = {
            **key,
            "n": a.n,
            "steps": a.sample_steps,
            "solver": a.solver,
            "cfg": cfg,
            "conditional": conditional,
            "own_cluster": own_cluster,
            "seed": a.seed,
            "data": a.data,
            "resolution": a.resolution,
            "judge": [a.judge_steps, a.bootstrap],
        }
        path = self.cache / "evals" / f"{digest(full_key)}.json"  # the label is only recorded
        nfe = solver_nfe(a.solver, a.sample_steps) * (2 if cfg != 1.0 else 1)
        flops = a.n * nfe * experts_run * self.forward_flops(model, conditional)
        if self.planning:
            self.plan("sample", flops, path.is_file(), path)
            if getattr(a, "report_only", False) and path.is_file():  # a partial report's row
                return json.loads(path.read_text())["metrics"]
            return Pending()
        if path.is_file():
            return json.loads(path.read_text())["metrics"]
        t0 = time.time()
        velocity = build()
        labels = self.labels if conditional else None
        images = generate(velocity, self.shape, self.seeds, a.sample_steps, a.solver, labels, cfg)
        images = images.clamp(-1, 1)
        sampled = time.time() - t0
        metrics = judged_metrics(self.reference, images, labels, own_cluster)
        m = FLOPS_SAMPLES
        counted = forward_flops(
            lambda: generate(
                velocity,
                self.shape,
                self.seeds[:m],
                a.sample_steps,
                a.solver,
                None if labels is None else labels[:m],
                cfg,
            )
        )
        samples = path.with_suffix(".safetensors")
        tensors = {"images": images.half().contiguous()}
        if labels is not None:
            tensors["labels"] = labels.contiguous()
        with atomic_path(samples) as tmp:
            safetensors.torch.save_file(tensors, str(tmp))
        metrics.update(
            gflops_per_sample=counted / m / 1e9,
            samples=samples.name,
            sample_seconds=round(sampled, 2),
            seconds=round(time.time() - t0, 2),
        )
        record = {"key": full_key, "label": label, "metrics": metrics}
        atomic_write_text(path, json.dumps(record, indent=1, default=float))
        self.finished(
            "sample", flops, time.time() - t0, f"{label}: FD_judge {metrics['fd_judge']:.2f}"
        )
        return metrics

    def samples(self, metrics: dict[str, Any]) -> torch.Tensor | None:
        """The images (n, C, H, W) float32 an evaluation kept; None in the planning pass (but
        for ``--report-only``)."""
        name = metrics.get("samples")
        report_only = getattr(self.args, "report_only", False)
        if (self.planning and not report_only) or not isinstance(name, str):
            return None
        return safetensors.torch.load_file(str(self.cache / "evals" / name))["images"].float()

    def compute_seconds(self) -> dict[str, float]:
        """Seconds recorded by every cached training and evaluation (across resumed runs)."""
        total = {"train": 0.0, "eval": 0.0}
        for path in (self.cache / "models").glob("*/step-*.json"):
            total["train"] += json.loads(path.read_text()).get("seconds", 0.0)
        for path in (self.cache / "evals").glob("*.json"):
            total["eval"] += json.loads(path.read_text())["metrics"].get("seconds", 0.0)
        return total
