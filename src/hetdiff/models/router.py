"""The router r(k | x_t, t, cond): a small classifier of which cluster x0 came from.

Trained apart from every expert with cross-entropy on the flow path (design.md section 3):

    x0 ~ data, k = cluster of x0 (partition manifest), t ~ U(0, 1), eps ~ N(0, I)
    x_t = (1 - t) x0 + t eps,   loss = -log softmax(router(x_t, t, cond))_k

Its minimizer is the Bayes router p(k | x_t, t, cond): one-hot as t -> 0, the cluster priors
p(k | cond) as t -> 1. The network is a small convolutional net, cheap next to an expert:

    x (B, C, H, W) --3x3 conv (stride 2 from 16 px)--> (B, W0, H', W')
    depth x [FiLM residual block, then 3x3 stride-2 conv while the side is > 4]
    GroupNorm, SiLU, global mean --Linear--> logits (B, K)  (+ Linear(SiLU(emb)): the prior term)

    emb (B, E) = MLP(sinusoid(t * time_scale)) [+ class embedding] [+ pooled text context]

A text router (``context_dim`` set) is trained on each image's caption
(``hetdiff.data.captions``), embedded by the experts' text encoder and mean-pooled over its real
tokens; captions are dropped to the null context with probability ``label_dropout``, as the
experts drop theirs, so the router also knows p(k | x_t, t) for the unconditional half of guidance.

FiLM: h = conv(SiLU(GroupNorm(x) * (1 + scale) + shift)), x <- x + h, with (shift, scale) a
zero-initialized Linear of SiLU(emb). Checkpoints: ``router.safetensors`` with the ``RouterSpec``
as JSON metadata. ``train_router`` runs the shared training loop (progress, resume, atomic
checkpoints); ``router_accuracy_by_t`` measures its quality per t-bucket.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hetdiff
from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_write_bytes, atomic_write_json
from hetdiff.models.conditioning import (
    Conditioning,
    as_conditioning,
    drop_labels,
    mean_of_real_tokens,
)
from hetdiff.models.embeddings import LabelEmbedder, timestep_embedding

if TYPE_CHECKING:
    from hetdiff.data.datasets import ImageDataset
    from hetdiff.data.partition import Partition
    from hetdiff.models.text import CaptionBank
    from hetdiff.training.loop import LossFn, TrainConfig

ROUTER_FILENAME = "router.safetensors"
ROUTER_FORMAT = "hetdiff-router/1"
CONDITIONINGS = ("none", "class", "text")
_FREQUENCY_SIZE = 128  # sinusoidal features of t * time_scale fed to the time MLP


#################################################################################
#                                   Config                                      #
#################################################################################


@dataclass(frozen=True)
class RouterConfig:
    """Architecture of one router. Defaults suit 28x28 gray data (about 40k parameters)."""

    num_clusters: int  # K: number of logits
    resolution: int  # image side H = W
    channels: int  # image channels C
    hidden: int = 32  # conv width (a multiple of 8: GroupNorm uses 8 groups)
    depth: int = 2  # FiLM residual blocks, each followed by a stride-2 conv while side > 4
    num_classes: int = 0  # 0 = no class input; else labels in [0, num_classes) or -1 (null)
    context_dim: int | None = None  # text-token width E; set to condition on pooled text
    time_scale: float = 1000.0  # the sinusoid sees t * time_scale, as the experts do

    def __post_init__(self) -> None:
        for name in ("num_clusters", "resolution", "channels", "hidden", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HetdiffError(f"RouterConfig.{name} must be a positive integer, got {value!r}")
        if self.num_clusters < 2:
            raise HetdiffError(f"a router needs num_clusters >= 2, got {self.num_clusters}")
        if self.hidden % 8:
            raise HetdiffError(f"RouterConfig.hidden must be a multiple of 8, got {self.hidden}")
        if isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise HetdiffError(f"num_classes must be >= 0 (0 = none), got {self.num_classes!r}")
        if self.context_dim is not None and self.context_dim < 1:
            raise HetdiffError(
                f"context_dim must be a positive integer or None, got {self.context_dim}"
            )
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise HetdiffError(f"time_scale must be a positive number, got {self.time_scale!r}")

    @property
    def conditioning(self) -> str:
        """ "text" with a context width, else "class" with classes, else "none"."""
        if self.context_dim is not None:
            return "text"
        return "class" if self.num_classes else "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RouterConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HetdiffError(
                f"unknown RouterConfig keys {unknown}; valid keys are {sorted(known)}"
            )
        return cls(**d)


#################################################################################
#                                   Network                                     #
#################################################################################


class FiLMBlock(nn.Module):
    """x + conv3x3(SiLU(GroupNorm(x) * (1 + scale) + shift)); (shift, scale) from emb (B, E)."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, width)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        shift, scale = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # 2 x (B, W, 1, 1)
        return x + self.conv(F.silu(torch.addcmul(shift, self.norm(x), 1 + scale)))


class Router(nn.Module):
    """``forward(x_t (B, C, H, W), t (B,) or scalar in [0, 1], cond) -> logits (B, K)``.

    ``cond``: a ``Conditioning`` / int64 labels / None. Class labels -1 (or none given) use the
    learned null class; a text context is mean-pooled over its real tokens, and rows without any
    real token (the null context) use a learned null vector. Conditions the router was not built
    for are ignored, so an unconditional router serves conditional experts.
    """

    def __init__(self, config: RouterConfig):
        super().__init__()
        self.config = config
        W, E = config.hidden, 2 * config.hidden
        self.time_mlp = nn.Sequential(nn.Linear(_FREQUENCY_SIZE, E), nn.SiLU(), nn.Linear(E, E))
        self.label_embed = LabelEmbedder(config.num_classes, E) if config.num_classes else None
        self.context_proj = self.null_context = None
        if config.context_dim is not None:
            self.context_proj = nn.Linear(config.context_dim, E)
            self.null_context = nn.Parameter(torch.zeros(E))
        stride = 2 if config.resolution >= 16 else 1
        self.stem = nn.Conv2d(config.channels, W, 3, stride=stride, padding=1)
        side = (config.resolution - 1) // stride + 1
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for _ in range(config.depth):
            self.blocks.append(FiLMBlock(W, E))
            down = side > 4
            self.downs.append(nn.Conv2d(W, W, 3, stride=2, padding=1) if down else nn.Identity())
            side = (side - 1) // 2 + 1 if down else side
        self.out_norm = nn.GroupNorm(8, W)
        self.head = nn.Linear(W, config.num_clusters)
        self.prior_head = nn.Linear(E, config.num_clusters)  # p(k | t, cond) without the image
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        nn.init.zeros_(self.prior_head.weight)
        nn.init.zeros_(self.prior_head.bias)

    def embed(self, t: Tensor, cond: Conditioning | None, batch: int) -> Tensor:
        """(B, E) embedding of time and condition."""
        weight = self.time_mlp[0].weight
        emb = self.time_mlp(
            timestep_embedding(t * self.config.time_scale, _FREQUENCY_SIZE).to(weight.dtype)
        )
        labels = None if cond is None else cond.class_labels
        if self.label_embed is not None:
            if labels is None:
                labels = torch.full((batch,), -1, dtype=torch.long, device=weight.device)
            if labels.numel() and (labels.min() < -1 or labels.max() >= self.config.num_classes):
                raise HetdiffError(
                    f"router class labels must be in [0, {self.config.num_classes}) or -1 (null), "
                    f"got range [{int(labels.min())}, {int(labels.max())}]"
                )
            emb = emb + self.label_embed(labels.to(weight.device))
        if self.context_proj is not None:
            emb = emb + self._pooled_context(cond, batch)
        return emb

    def _pooled_context(self, cond: Conditioning | None, batch: int) -> Tensor:
        null = self.null_context.expand(batch, -1)  # (B, E)
        if cond is None or cond.context is None:
            return null
        pooled, count = mean_of_real_tokens(cond.context, cond.context_mask, null.dtype)
        return torch.where(count > 0, self.context_proj(pooled), null)

    def forward(
        self, x: Tensor, t: Tensor | float, cond: Conditioning | Tensor | None = None
    ) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (cfg.channels, cfg.resolution, cfg.resolution):
            raise HetdiffError(
                f"router expects x of shape (B, {cfg.channels}, {cfg.resolution}, "
                f"{cfg.resolution}), got {tuple(x.shape)}; use a router trained on this data"
            )
        batch, dtype = x.shape[0], self.stem.weight.dtype
        t = torch.as_tensor(t, device=x.device, dtype=dtype)
        t = t.expand(batch) if t.ndim == 0 else t.to(dtype)
        cond = as_conditioning(cond)
        emb = self.embed(t, cond, batch)  # (B, E)
        h = self.stem(x.to(dtype))  # (B, W, H', W')
        for block, down in zip(self.blocks, self.downs, strict=True):
            h = down(block(h, emb))
        pooled = F.silu(self.out_norm(h)).mean(dim=(2, 3))  # (B, W)
        return self.head(pooled) + self.prior_head(F.silu(emb))  # (B, K)


#################################################################################
#                               Spec and checkpoint                             #
#################################################################################


@dataclass(frozen=True, kw_only=True)
class RouterSpec:
    """Self-description of a router checkpoint, stored as JSON in its safetensors metadata."""

    num_clusters: int  # K of the partition it was trained on
    partition_fingerprint: str  # Partition.fingerprint: experts must come from the same split
    data_fingerprint: str = ""  # the training data set's fingerprint
    data_spec: str = ""  # how the data was named
    resolution: int
    channels: int
    num_classes: int = 0
    conditioning: str = "none"  # "none" | "class" | "text"
    text_encoder: str | None = None  # text routers: the encoder of their captions (hash, minilm)
    model: dict[str, Any]  # RouterConfig.to_dict()
    steps: int = 0  # optimizer steps trained
    hetdiff_version: str = hetdiff.__version__

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise HetdiffError(
                f"unknown router conditioning {self.conditioning!r}; use one of {CONDITIONINGS}"
            )
        if not isinstance(self.partition_fingerprint, str) or not self.partition_fingerprint:
            raise HetdiffError("a router spec needs the partition_fingerprint it was trained on")
        if not isinstance(self.model, dict):
            raise HetdiffError(f"router spec model must be a RouterConfig dict, got {self.model!r}")
        config = RouterConfig.from_dict(self.model)
        for name in ("num_clusters", "resolution", "channels", "num_classes"):
            if getattr(self, name) != getattr(config, name):
                raise HetdiffError(
                    f"router spec {name}={getattr(self, name)!r} disagrees with its model config "
                    f"({getattr(config, name)!r})"
                )
        if self.conditioning != config.conditioning:
            raise HetdiffError(
                f"router spec conditioning {self.conditioning!r} disagrees with its model "
                f"config ({config.conditioning!r})"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise HetdiffError(f"router spec steps must be an integer >= 0, got {self.steps!r}")
        if self.text_encoder is not None and (
            not isinstance(self.text_encoder, str) or not self.text_encoder
        ):
            raise HetdiffError(
                f"router spec text_encoder must be a non-empty string or null, got "
                f"{self.text_encoder!r}"
            )
        if self.text_encoder is not None and self.conditioning != "text":
            raise HetdiffError(
                f"router spec names text encoder {self.text_encoder!r} but its conditioning is "
                f"{self.conditioning!r}; only a text router (context_dim set) has an encoder"
            )

    @classmethod
    def for_config(
        cls, config: RouterConfig, partition_fingerprint: str, **fields: Any
    ) -> RouterSpec:
        """A spec whose shape fields are read from ``config``."""
        return cls(
            num_clusters=config.num_clusters,
            partition_fingerprint=partition_fingerprint,
            resolution=config.resolution,
            channels=config.channels,
            num_classes=config.num_classes,
            conditioning=config.conditioning,
            model=config.to_dict(),
            **fields,
        )

    @property
    def config(self) -> RouterConfig:
        return RouterConfig.from_dict(self.model)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> RouterSpec:
        try:
            d = json.loads(text)
        except ValueError as err:
            raise HetdiffError(f"router spec is not valid JSON ({err})") from err
        if not isinstance(d, dict):
            raise HetdiffError(f"a router spec must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HetdiffError(f"unknown router spec keys {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as err:
            raise HetdiffError(f"router spec is incomplete ({err})") from err


def router_file(path_or_dir: str | Path) -> Path:
    """``DIR/router.safetensors`` for a directory, else the path itself."""
    path = Path(path_or_dir)
    return path / ROUTER_FILENAME if path.is_dir() else path


def save_router(path: str | Path, state: dict[str, Tensor], spec: RouterSpec) -> Path:
    """Write weights + spec to ``path`` (a file, or a directory that gets router.safetensors)."""
    target = router_file(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"format": ROUTER_FORMAT, "router_spec": spec.to_json()}
    atomic_write_bytes(target, safetensors.torch.save(tensors, metadata=metadata))
    return target


def read_router_spec(path_or_dir: str | Path) -> RouterSpec:
    """The spec of a router checkpoint, without loading its weights."""
    target = router_file(path_or_dir)
    if not target.is_file():
        raise HetdiffError(
            f"no router checkpoint at {target}; train one with `hetdiff train-router --out DIR`"
        )
    try:
        with safetensors.safe_open(str(target), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise HetdiffError(
            f"router checkpoint {target} is unreadable ({type(err).__name__})"
        ) from err
    if metadata.get("format") != ROUTER_FORMAT or "router_spec" not in metadata:
        raise HetdiffError(f"{target} is not a hetdiff router checkpoint (no {ROUTER_FORMAT} spec)")
    return RouterSpec.from_json(metadata["router_spec"])


def load_router(
    path_or_dir: str | Path, device: torch.device | str = "cpu"
) -> tuple[Router, RouterSpec]:
    """Rebuild a router from its checkpoint; returns (router in eval mode on ``device``, spec)."""
    spec = read_router_spec(path_or_dir)
    router = Router(spec.config)
    state = safetensors.torch.load_file(str(router_file(path_or_dir)))
    try:
        router.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise HetdiffError(f"router weights do not match its spec ({first})") from err
    return router.to(device).eval(), spec


#################################################################################
#                                   Training                                    #
#################################################################################
# The training loop hands loss_fn (model, x0, labels, generator) with labels a (B,) int64 column
# of the data. The router needs two targets per row, its cluster and its condition (class label,
# or caption id for a text router), so the trainer packs both into that one column:
# code = (label + 1) * K + cluster, label = -1 when the router is unconditional. The loop's data
# fingerprint then covers clusters and conditions, so a resume against another partition is
# refused.


def encode_router_targets(clusters: Tensor, labels: Tensor | None, num_clusters: int) -> Tensor:
    """(N,) int64 codes = (label + 1) * K + cluster, labels in [-1, num_classes)."""
    clusters = torch.as_tensor(clusters, dtype=torch.int64)
    if clusters.numel() and (clusters.min() < 0 or clusters.max() >= num_clusters):
        raise HetdiffError(
            f"cluster ids must be in [0, {num_clusters}); got max {int(clusters.max())}"
        )
    labels = (
        torch.full_like(clusters, -1)
        if labels is None
        else torch.as_tensor(labels, dtype=torch.int64)
    )
    return (labels + 1) * num_clusters + clusters


def decode_router_targets(codes: Tensor, num_clusters: int) -> tuple[Tensor, Tensor]:
    """Inverse of ``encode_router_targets``: (clusters (N,), labels (N,), -1 = none)."""
    return codes % num_clusters, codes // num_clusters - 1


def flow_path_batch(x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """t ~ U(0, 1) (B,), x_t = (1 - t) x0 + t eps; all randomness from ``generator``."""
    t = torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    tb = t.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - tb) * x0 + tb * eps, t


def router_loss_fn(
    num_clusters: int,
    num_classes: int = 0,
    label_dropout: float = 0.1,
    bank: CaptionBank | None = None,
) -> LossFn:
    """``loss_fn(router, x0, codes, generator) -> (B,)`` cross-entropy against the cluster of x0.

    ``codes`` are ``encode_router_targets`` output. A class-conditional router
    (``num_classes`` > 0) sees each label replaced by the null class with probability
    ``label_dropout``, so it also learns p(k | x_t, t) for the unconditional half of guidance.
    With a caption ``bank`` the codes carry caption ids instead of labels: each becomes its
    caption's embedding, or the null context with probability ``label_dropout``.
    """
    if not 0.0 <= label_dropout <= 1.0:
        raise HetdiffError(f"label_dropout must be in [0, 1], got {label_dropout}")
    if bank is not None and num_classes:
        raise HetdiffError("a router conditions on class labels or on captions, not both")

    def loss_fn(
        model: nn.Module, x0: Tensor, codes: Tensor | None, generator: torch.Generator
    ) -> Tensor:
        if codes is None:
            raise HetdiffError("router training needs cluster targets; use train_router")
        clusters, labels = decode_router_targets(codes, num_clusters)
        x_t, t = flow_path_batch(x0, generator)
        cond: Conditioning | Tensor | None = None
        if bank is not None:
            cond = bank.conditioning(drop_labels(labels, label_dropout, generator))
        elif num_classes:
            cond = drop_labels(labels, label_dropout, generator)
        return F.cross_entropy(model(x_t, t, cond).float(), clusters, reduction="none")

    return loss_fn


def train_router(
    dataset: ImageDataset,
    partition: Partition,
    steps: int,
    out_dir: str | Path,
    config: RouterConfig | None = None,
    train_config: TrainConfig | None = None,
    label_dropout: float = 0.1,
    resume: bool = False,
    text_encoder: str | None = None,
    caption_seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Path:
    """Train a router on ``dataset`` against ``partition``'s clusters; return its checkpoint path.

    Uses ``hetdiff.training.loop.train`` (progress bar, JSONL log, resumable state in
    ``out_dir/train_state``); at every checkpoint the EMA weights are written atomically to
    ``out_dir/router.safetensors`` with a ``RouterSpec`` (K, partition fingerprint, data, steps).
    ``config`` defaults to an unconditional router of the data's resolution and channels.

    ``text_encoder`` ("hash", "minilm" or a folder, as the experts' ``--text-encoder``) trains a
    text router: ``config`` then defaults to ``context_dim`` = the encoder's token width, and
    each image is seen with its caption (``dataset_captions(dataset, caption_seed)``, embedded
    once into a caption bank under ``cache_dir``), dropped to the null context with probability
    ``label_dropout``. The spec records conditioning "text" and the encoder.
    """
    from hetdiff.training.loop import STATE_DIRNAME, TrainConfig, train
    from hetdiff.training.state import read_manifest

    partition.check_dataset(dataset)
    bank = caption_ids = None
    if text_encoder is not None:
        from hetdiff.models.text import dataset_caption_bank

        bank, caption_ids = dataset_caption_bank(dataset, text_encoder, caption_seed, cache_dir)
    if config is None:
        config = RouterConfig(
            partition.k,
            dataset.resolution,
            dataset.channels,
            context_dim=None if bank is None else bank.dim,
        )
    if (config.num_clusters, config.resolution, config.channels) != (
        partition.k,
        dataset.resolution,
        dataset.channels,
    ):
        raise HetdiffError(
            f"router config (K={config.num_clusters}, {config.resolution} px, {config.channels} ch) "
            f"does not fit partition K={partition.k} and data {dataset.resolution} px, "
            f"{dataset.channels} ch; build the config from them"
        )
    if bank is None and config.context_dim is not None:
        raise HetdiffError(
            f"router config has context_dim={config.context_dim} but no text encoder was given; "
            "pass text_encoder (--text-encoder) or set context_dim=None"
        )
    if bank is not None and (config.context_dim != bank.dim or config.num_classes):
        raise HetdiffError(
            f"a text router on {text_encoder} needs context_dim={bank.dim} and no classes, got "
            f"context_dim={config.context_dim}, num_classes={config.num_classes}"
        )
    if config.num_classes and config.num_classes != dataset.num_classes:
        raise HetdiffError(
            f"router num_classes={config.num_classes} but the data has {dataset.num_classes} classes"
        )
    train_config = dataclasses.replace(train_config or TrainConfig(), steps=int(steps))
    out_dir = Path(out_dir)
    config_path = out_dir / "router_config.json"
    if not resume and read_manifest(out_dir / STATE_DIRNAME) is not None:
        raise HetdiffError(
            f"{out_dir} already holds router training state; pass --resume to continue it or "
            "choose a new output directory"
        )
    resolved: dict[str, Any] = {
        "router": config.to_dict(),
        "label_dropout": label_dropout,
        "partition": partition.fingerprint,
    }
    if bank is not None:
        resolved.update(text_encoder=text_encoder, caption_seed=caption_seed)
    if resume and config_path.is_file() and json.loads(config_path.read_text()) != resolved:
        raise HetdiffError(
            f"cannot resume: the router config or partition differs from {config_path}; "
            "pass the same settings or start a new run"
        )
    clusters = torch.from_numpy(partition.cluster_of(dataset.ids)).long()
    conditions = dataset.labels if config.num_classes else caption_ids  # caption ids: text
    codes = encode_router_targets(clusters, conditions, partition.k)
    print(json.dumps(resolved, sort_keys=True))
    atomic_write_json(config_path, resolved)

    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed alone
        torch.manual_seed(train_config.seed)
        router = Router(config)
    target = out_dir / ROUTER_FILENAME

    def on_checkpoint(ema_state: dict[str, Tensor], step: int) -> None:
        spec = RouterSpec.for_config(
            config,
            partition.fingerprint,
            data_fingerprint=str(dataset.fingerprint),
            data_spec=str(dataset.spec),
            steps=step,
            text_encoder=text_encoder,
        )
        save_router(target, ema_state, spec)

    loss_fn = router_loss_fn(partition.k, config.num_classes, label_dropout, bank)
    train(router, dataset.images, codes, loss_fn, train_config, out_dir, on_checkpoint, resume)
    return target


#################################################################################
#                                  Evaluation                                   #
#################################################################################


class RouterAccuracy(NamedTuple):
    """Router quality in one t-bucket: top-1 accuracy, mean entropy (nats), and the accuracy of
    always answering the largest cluster (what a router that ignores x_t achieves)."""

    t_lo: float
    t_hi: float
    accuracy: float
    entropy: float
    prior_accuracy: float


@torch.no_grad()
def router_accuracy_by_t(
    router: nn.Module,
    dataset: ImageDataset,
    partition: Partition,
    buckets: int = 10,
    n: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
    text_encoder: str | None = None,
    caption_seed: int = 0,
    cache_dir: str | Path | None = None,
) -> list[RouterAccuracy]:
    """Accuracy of ``router`` at predicting the cluster of x0 from x_t, per t-bucket.

    ``n`` samples (a seeded random subset) are noised at t ~ U(bucket) on the flow path; a
    class-conditional router gets their labels, a text router (which needs ``text_encoder``, the
    one in its spec) their captions.
    """
    partition.check_dataset(dataset)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(dataset), generator=generator)[: min(n, len(dataset))]
    x0, labels = dataset.images[rows], dataset.labels[rows]
    clusters = torch.from_numpy(partition.cluster_of(dataset.ids[rows])).long()
    prior_accuracy = float(
        (clusters == int(torch.tensor(partition.sizes).argmax())).double().mean()
    )
    router_config = getattr(router, "config", None)
    conditional = bool(getattr(router_config, "num_classes", 0))
    bank = None
    if getattr(router_config, "context_dim", None) is not None:
        if text_encoder is None:
            raise HetdiffError(
                "this router is conditioned on text; pass the text_encoder of its spec to "
                "measure it with the images' captions"
            )
        from hetdiff.models.text import dataset_caption_bank

        bank, caption_ids = dataset_caption_bank(dataset, text_encoder, caption_seed, cache_dir)
        labels = caption_ids[rows]
    device = next(router.parameters()).device
    was_training = router.training
    router.eval()
    results = []
    for b in range(buckets):
        lo, hi = b / buckets, (b + 1) / buckets
        correct, entropy = 0.0, 0.0
        for start in range(0, len(rows), batch_size):
            x = x0[start : start + batch_size]
            t = lo + (hi - lo) * torch.rand(x.shape[0], generator=generator)
            eps = torch.randn(x.shape, generator=generator)
            x_t = (1 - t[:, None, None, None]) * x + t[:, None, None, None] * eps
            cond = None
            if bank is not None:
                cond = bank.conditioning(labels[start : start + batch_size]).to(device)
            elif conditional:
                cond = labels[start : start + batch_size].to(device)
            logits = router(x_t.to(device), t.to(device), cond).float().cpu()
            log_p = torch.log_softmax(logits, dim=1)
            correct += float((logits.argmax(1) == clusters[start : start + batch_size]).sum())
            entropy += float(-(log_p.exp() * log_p).sum(1).sum())
        results.append(
            RouterAccuracy(lo, hi, correct / len(rows), entropy / len(rows), prior_accuracy)
        )
    router.train(was_training)
    return results
