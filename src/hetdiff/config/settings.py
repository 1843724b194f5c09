"""Frozen settings for everything a user asks for; every default lives here, once.

The *Settings types say what a job asks for (one expert, the router, sampling, evaluation, the
clusters); ``RunConfig`` composes them into one ``hetdiff run``; ``QUICK`` is the ``--quick``
preset. Architecture configs (``DiTConfig``, the router's ``RouterConfig``) and the training
loop's ``TrainConfig`` live beside their code: they are built from these settings.

Every type checks its own field types and ranges on construction (one-line ``HetdiffError``),
and ``validate_run`` checks a whole run (names of strategies, solvers, schedules, predictions,
models, resolution against the patch size, K against the experts) before any stage starts.
A config file (TOML, YAML or JSON) overrides any subset of fields; unknown keys are refused with
the nearest valid key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from hetdiff.config.fields import at_least, build_settings, check_fields, in_unit, one_of
from hetdiff.errors import HetdiffError
from hetdiff.models.router_transformer import TRANSFORMER_ROUTER_CONFIGS  # router sizes
from hetdiff.objectives.kinds import DDPM, FLOW, resolve_objective, uses_schedule
from hetdiff.objectives.losses import TIME_SAMPLINGS  # flow training: p(t), defined by the loss

# The names a user may ask for; the code that implements each set imports it from here
# (objectives, models and data sit below config, so their names are imported from them).
STRATEGIES = ("full", "top-k", "top1", "sample", "nucleus")  # how router weights pick experts
EVALUATE_STRATEGIES = ("top1", "full")  # what `hetdiff evaluate` measures by default
SOLVERS = ("euler", "heun")  # ODE solvers on the flow path
SPACINGS = ("leading", "trailing", "linspace")  # diffusers' DDIM timestep_spacing options
MIXED_PRECISION = ("no", "bf16", "fp16", "auto")
LAUNCHERS = ("local", "slurm", "ray")  # where `hetdiff run` trains its experts (hetdiff.launch)
ROUTER_ARCHS = ("film", "transformer")  # the FiLM conv router | AdaLN-Single DiT blocks + head
ROUTER_SIZES = tuple(TRANSFORMER_ROUTER_CONFIGS)  # named transformer router configs


@dataclass(frozen=True)
class ClusterSettings:
    """How the data is split into K clusters (one expert each)."""

    k: int = 4  # number of clusters = number of experts
    fine: int = 64  # fine k-means centroids (first stage)
    features: str = "efficientnet-lite0@64"  # encoder key: efficientnet-lite0@<px> or "pixels"
    balanced: bool = True  # balance coarse cluster sizes
    random: bool = False  # random partition instead of feature clusters (a baseline)

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 2, "k")
        at_least(self, 1, "fine")


@dataclass(frozen=True)
class ExpertSettings:
    """What one expert's owner asks for: objective, network and optimization.

    ``prediction`` None is the objective's own (velocity for flow, eps for ddpm); ``schedule``
    None is linear for ddpm and must stay None for flow. Both are resolved on construction, so
    ``to_dict`` shows what will train.
    """

    objective: str = FLOW  # FLOW or DDPM (hetdiff.objectives.kinds.OBJECTIVES)
    prediction: str | None = None  # flow: velocity; ddpm: eps | x0 | v
    schedule: str | None = None  # ddpm: linear | cosine | scaled_linear
    model: str = "tiny"  # a named DiT config (hetdiff.models.dit.DIT_CONFIGS)
    learned_variance: bool = False  # ddpm: extra variance output channels (not trained)
    class_conditional: bool = True  # condition on class labels (with CFG label dropout)
    label_dropout: float = 0.1  # P(label -> null class), or P(caption -> null), in training
    text_encoder: str | None = None  # caption-conditioned: "hash" | "minilm" | encoder folder
    caption_seed: int = 0  # seeds each sample's caption template (hetdiff.data.captions)
    time_sampling: str = "logit_normal"  # flow: uniform | logit_normal
    # ddpm: min-SNR-gamma loss weight (Hang et al. 2023; they use 5); None: unweighted
    min_snr_gamma: float | None = None
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    seed: int = 0
    mixed_precision: str = "auto"  # no | bf16 | fp16 | auto
    gradient_checkpointing: bool = False  # recompute block activations in backward: less memory
    progress: bool = True
    # speed only (not in run keys, toggled on resume): torch.compile the network + fused AdamW;
    # equal to eager to float rounding; the first steps pay the compilation
    compile: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        objective, prediction, schedule = resolve_objective(
            self.objective, self.prediction, self.schedule, self.learned_variance,
            f"{type(self).__name__}.",
        )  # fmt: skip
        object.__setattr__(self, "prediction", prediction)
        object.__setattr__(self, "schedule", schedule)
        at_least(self, 1, "steps", "batch_size", "checkpoint_every")
        at_least(self, 0, "warmup_steps", "grad_clip", "caption_seed", "seed")
        in_unit(self, "label_dropout", "ema_decay")
        if self.lr <= 0:
            raise HetdiffError(f"ExpertSettings.lr must be a positive number, got {self.lr!r}")
        one_of(self, "time_sampling", TIME_SAMPLINGS)
        one_of(self, "mixed_precision", MIXED_PRECISION)
        if self.min_snr_gamma is not None:
            if self.min_snr_gamma <= 0:
                raise HetdiffError(
                    f"ExpertSettings.min_snr_gamma must be > 0 or null, got {self.min_snr_gamma!r}"
                )
            if not uses_schedule(self.objective):
                raise HetdiffError(
                    "ExpertSettings.min_snr_gamma weights the DDPM loss; a flow expert takes "
                    "none: drop it or use objective ddpm"
                )
        if self.text_encoder is not None and not self.text_encoder.strip():
            raise HetdiffError("ExpertSettings.text_encoder must be a name or a folder, not empty")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExpertSettings:
        return build_settings(cls, values, "expert.")


@dataclass(frozen=True)
class RouterSettings:
    """The router's size and training; one policy for ``train-router`` and ``hetdiff run``."""

    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    hidden: int = 32  # conv width (a multiple of 8)
    warmup_steps: int = 50  # capped at ``steps``
    checkpoint_every: int | None = None  # None: every steps // 2 (at least 1)
    label_dropout: float = 0.1  # P(condition -> null), as the experts drop theirs
    seed: int = 0
    progress: bool = True
    arch: str = "film"  # "film" (conv, width ``hidden``) | "transformer" (named ``size``)
    size: str = "tiny"  # transformer router: a ROUTER_SIZES name ("DiT-B/2": ~129M parameters)

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 1, "steps", "batch_size")
        at_least(self, 0, "warmup_steps", "seed")
        in_unit(self, "label_dropout")
        one_of(self, "arch", ROUTER_ARCHS)
        one_of(self, "size", ROUTER_SIZES)
        if self.lr <= 0:
            raise HetdiffError(f"RouterSettings.lr must be a positive number, got {self.lr!r}")
        if self.hidden < 8 or self.hidden % 8:
            raise HetdiffError(f"RouterSettings.hidden must be a multiple of 8, got {self.hidden}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise HetdiffError(
                f"RouterSettings.checkpoint_every must be >= 1 or null, got {self.checkpoint_every}"
            )

    @property
    def resolved_warmup_steps(self) -> int:
        return min(self.warmup_steps, self.steps)

    @property
    def resolved_checkpoint_every(self) -> int:
        return self.checkpoint_every or max(1, self.steps // 2)


@dataclass(frozen=True)
class SampleSettings:
    """How samples are drawn from an ensemble."""

    n: int = 64  # samples per strategy
    steps: int = 30
    solver: str = "heun"
    strategies: tuple[str, ...] = ("top1", "full", "top-k", "sample")
    top_k: int = 2
    top_p: float = 0.9  # nucleus: keep the fewest experts whose weights sum to >= top_p
    cfg: float = 3.0  # classifier-free guidance scale (1 = conditional velocity, no guidance)
    # text runs only: one grid per prompt from the first strategy; None = one per class (<= 8)
    prompts: tuple[str, ...] | None = None
    per_prompt: int = 16  # images in each prompt's grid
    per_class: int = 8  # report: images in each class's row (samples drawn with that label)
    # speed only (not in run keys): torch.compile each expert's network and the router for
    # inference; images equal eager ones to float rounding, the first batch pays compilation
    compile: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 1, "n", "steps", "top_k", "per_prompt", "per_class")
        one_of(self, "solver", SOLVERS)
        if not 0 < self.top_p <= 1:
            raise HetdiffError(f"SampleSettings.top_p must be in (0, 1], got {self.top_p!r}")
        if not self.strategies:
            raise HetdiffError("SampleSettings.strategies must list at least one strategy")
        for name in self.strategies:
            if name not in STRATEGIES:
                close = difflib.get_close_matches(name, STRATEGIES, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"use {', '.join(STRATEGIES)}"
                raise HetdiffError(f"unknown strategy {name!r} in sample.strategies; {hint}")
        if self.prompts is not None and (
            not self.prompts or not all(p.strip() for p in self.prompts)
        ):
            raise HetdiffError(
                f"sample.prompts must be a non-empty list of non-empty strings, got "
                f"{list(self.prompts)}"
            )


@dataclass(frozen=True)
class EvalSettings:
    """What ``evaluate`` measures, and on how many images."""

    n: int = 128  # samples per strategy and expert that the metrics judge
    # Inception FID (InceptionV3 runs ~20 images/s on 2 CPU cores): off by default, since at
    # n = 128 it resolves only large effects (issue 18); turn on with n >= 1000
    fid: bool = False
    reference_n: int = 500  # real images for the reference statistics (cached per data set)
    per_expert: bool = True  # also FID of each expert alone (against the data and its cluster)
    judge: bool = True  # FD_judge, precision/recall/density/coverage, class and cluster coverage
    judge_steps: int = 1000  # judge classifier training steps (once per data set, then cached)
    judge_holdout: float = 0.25  # data held out from the judge: its accuracy, the real reference
    judge_reference_n: int = 5000  # held-out real images the judge metrics compare against
    nearest_k: int = 5  # k of the k-NN manifolds (Naeem et al. 2020 recommend 5)
    bootstrap: int = 200  # bootstrap draws for every 95% interval (0: point values only)
    fid_bootstrap: int = 50  # draws for Inception FID's interval (2048-d: ~0.05-0.2 s a draw)

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 1, "n", "reference_n", "judge_steps", "judge_reference_n", "nearest_k")
        at_least(self, 0, "bootstrap", "fid_bootstrap")
        if not 0 < self.judge_holdout < 1:
            raise HetdiffError(
                f"EvalSettings.judge_holdout must be in (0, 1), got {self.judge_holdout!r}"
            )


@dataclass(frozen=True)
class DistillSettings:
    """A dense student distilled from an ensemble, and its optimization."""

    model: str = "tiny"  # named DiT config of the student
    strategy: str = "full"  # the teacher's routing strategy (one of STRATEGIES)
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    label_dropout: float = 0.1  # P(label -> null) for classifier-free guidance
    time_sampling: str = "uniform"  # uniform | logit_normal, mapped into the teacher's t_range
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 | auto
    progress: bool = True
    # speed only (toggled on resume): torch.compile the student (+ fused AdamW) and the teacher's
    # networks; equal to eager to float rounding; the first steps pay the compilation
    compile: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 1, "steps", "batch_size", "checkpoint_every")
        at_least(self, 0, "warmup_steps", "grad_clip", "seed")
        in_unit(self, "label_dropout", "ema_decay")
        if self.lr <= 0:
            raise HetdiffError(f"DistillSettings.lr must be a positive number, got {self.lr!r}")
        one_of(self, "strategy", STRATEGIES)
        one_of(self, "time_sampling", TIME_SAMPLINGS)
        one_of(self, "mixed_precision", MIXED_PRECISION)


@dataclass(frozen=True)
class ResourceSettings:
    """Where and with what one expert trains under a remote launcher (``hetdiff run
    --launcher slurm|ray``; the local launcher ignores them). Islands differ, so each expert
    has its own (``RunConfig.resources``)."""

    cpus: int = 1  # CPU cores (Slurm cpus_per_task, Ray num_cpus); also the job's torch threads
    gpus: int = 0  # GPUs (Slurm --gpus-per-node, Ray num_gpus)
    mem: str | None = None  # Slurm --mem, e.g. "16G" (None: the partition's default)
    time: int = 60  # time limit in minutes; at the limit Slurm requeues and the job resumes
    partition: str | None = None  # Slurm partition (None: the cluster's default)
    account: str | None = None  # Slurm account (None: the user's default)
    requeues: int = 3  # Slurm: how often a preempted or timed-out job is requeued
    ray_resources: tuple[str, ...] = ()  # Ray custom resources the task needs, 1 each (a node)
    tasks: int = 1  # data-parallel processes (Slurm srun tasks; local: torchrun); gloo on CPU

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 1, "cpus", "time", "tasks")
        at_least(self, 0, "gpus", "requeues")
        for name in ("mem", "partition", "account"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise HetdiffError(f"ResourceSettings.{name} must be a non-empty string or null")
        if any(not label.strip() for label in self.ray_resources):
            raise HetdiffError("ResourceSettings.ray_resources must list non-empty names")


def _default_experts() -> tuple[ExpertSettings, ...]:
    # the default mixes objectives: 2 DDPM experts on different schedules, 2 flow experts,
    # 1000 steps each at lr 2e-3 (the default run: under 10 minutes on 2 cores in all). DDPM
    # experts predict v: on cluster 0 at 1000 steps and guidance 3, one expert's judge class
    # accuracy was 0.73 (v, lr 1e-3) and 0.87 (v, lr 2e-3); at 1200 steps and lr 1e-3, eps
    # 0.34, eps with min-SNR-5 0.52, v 0.78 (docs/measured.md)
    return (
        ExpertSettings(objective=DDPM, prediction="v", schedule="linear", steps=1000, lr=2e-3),
        ExpertSettings(objective=FLOW, steps=1000, lr=2e-3),
        ExpertSettings(objective=DDPM, prediction="v", schedule="cosine", steps=1000, lr=2e-3),
        ExpertSettings(objective=FLOW, steps=1000, lr=2e-3),
    )


@dataclass(frozen=True)
class RunConfig:
    """One ``hetdiff run``: the data, the clusters, one ``ExpertSettings`` per cluster, the
    router, sampling and evaluation. The pipeline gives expert k the seed ``seed + k``, the run's
    conditioning (``class_conditional``, ``text_encoder``) and 4 checkpoints."""

    data: str = "mnist5k+animal-mnist"
    resolution: int = 16
    seed: int = 0
    workers: int = 2  # experts trained in parallel, each in its own process
    class_conditional: bool = True
    # captions instead of class labels for experts and router: "hash" | "minilm" | a folder
    text_encoder: str | None = None
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    experts: tuple[ExpertSettings, ...] = field(default_factory=_default_experts)
    router: RouterSettings = field(default_factory=RouterSettings)
    sample: SampleSettings = field(default_factory=SampleSettings)
    evaluate: EvalSettings = field(default_factory=EvalSettings)
    # one per expert, in order, for remote launchers; empty: ResourceSettings() for every expert
    resources: tuple[ResourceSettings, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 1, "workers")
        at_least(self, 4, "resolution")
        at_least(self, 0, "seed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resources_of(self, k: int) -> ResourceSettings:
        """Expert ``k``'s resources (the defaults when ``resources`` is empty)."""
        return self.resources[k] if self.resources else ResourceSettings()


# `hetdiff run --quick`: a two-minute run (pixel clusters, 60 steps per expert, no FID)
QUICK: dict[str, Any] = {
    "resolution": 16,
    "cluster": {"k": 2, "fine": 16, "features": "pixels"},
    "experts": [
        {"objective": DDPM, "prediction": "eps", "schedule": "linear", "steps": 60},
        {"objective": FLOW, "steps": 60},
    ],
    "router": {"steps": 60},
    "sample": {"n": 16, "steps": 8, "strategies": ["top1", "full"], "cfg": 1.0},
    "evaluate": {
        "n": 16,
        "fid": False,
        "judge": False,
    },  # FID at n = 16 would say nothing and cost a minute
}
PRESETS = {"quick": QUICK}
