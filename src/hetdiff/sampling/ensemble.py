"""The heterogeneous ensemble: K experts and a router as one velocity function.

    u(x_t, t, cond) = sum_k r_k(x_t, t, cond) v_k(x_t, t, cond)        (design.md section 3)

Every expert is a ``VelocityModel`` (a flow net, or a DDPM net behind its schedule-aware
adapter), so the experts may differ in objective, schedule, prediction type and size. The router
gives logits over the K clusters of the partition; the weights are their softmax over the
clusters whose expert is present (renormalized when some are missing).

Strategies:
    full    every expert on every row, weighted by r                        (K expert passes)
    top-k   the k largest weights per row, renormalized to sum to 1
    top1    the largest weight per row, weight 1                            (one expert pass)
    sample  one expert per row drawn from Categorical(r), a fresh draw at every evaluation

top-k, top1 and sample group the batch by chosen expert: each expert runs once per evaluation on
just its rows (``index_select``; a whole batch for one expert goes through uncopied), and the
results are scattered back, so top1 costs one expert pass over the batch plus the router.
``sample`` draws on the CPU from the ensemble's own seeded ``torch.Generator``, so the draws
depend on the seed only (not on the device).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hetdiff.conditioning import Conditioning, as_conditioning
from hetdiff.config import STRATEGIES
from hetdiff.errors import HetdiffError
from hetdiff.objectives.schedules import check_t_in_range
from hetdiff.objectives.velocity import VelocityModel, common_t_range

RouterFn = Callable[[Tensor, Tensor, Any], Tensor]
"""router(x (B, C, H, W), t (B,) in [0, 1], cond) -> logits (B, K)."""


class Ensemble(nn.Module):
    """Experts + router -> ``forward(x (B, C, H, W), t (B,) or scalar, cond) -> v (B, C, H, W)``.

    Args:
        experts: velocity models, one per cluster present.
        cluster_ids: the cluster each expert was trained on (unique, in [0, num_clusters)).
        router: ``router(x, t, cond) -> (B, num_clusters)`` logits (log-probabilities work too).
        num_clusters: K of the router's partition.
        strategy: one of ``STRATEGIES``.
        top_k: k of "top-k" (1 <= k <= number of experts).
        allow_missing: permit clusters without an expert; the router is renormalized over the
            experts present (a warning says so). Otherwise a missing cluster is an error.
        generator: CPU generator for "sample" (default: seeded with 0).
        record: append ``(t (B,), weights (B, K'))`` to ``self.recorded`` at every evaluation.

    ``t_range`` is the interval every expert covers; ``forward`` refuses t outside it.
    """

    def __init__(
        self,
        experts: Sequence[VelocityModel],
        cluster_ids: Sequence[int],
        router: RouterFn,
        num_clusters: int,
        strategy: str = "full",
        top_k: int = 2,
        allow_missing: bool = False,
        generator: torch.Generator | None = None,
        record: bool = False,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise HetdiffError(
                f"unknown ensemble strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if len(experts) == 0:
            raise HetdiffError("an ensemble needs at least one expert")
        if len(experts) != len(cluster_ids):
            raise HetdiffError(
                f"got {len(experts)} experts but {len(cluster_ids)} cluster ids; give one each"
            )
        ids = [int(k) for k in cluster_ids]
        out_of_range = [k for k in ids if not 0 <= k < num_clusters]
        if out_of_range:
            raise HetdiffError(
                f"expert cluster id {out_of_range[0]} is outside the router's "
                f"0..{num_clusters - 1}; were the experts trained on another partition?"
            )
        duplicates = sorted(k for k, n in Counter(ids).items() if n > 1)
        if duplicates:
            raise HetdiffError(
                f"cluster {duplicates[0]} has more than one expert; keep one expert per cluster"
            )
        self.missing_clusters = sorted(set(range(num_clusters)) - set(ids))
        if self.missing_clusters and not allow_missing:
            raise HetdiffError(
                f"no expert for cluster(s) {self.missing_clusters} of K={num_clusters}; train "
                "them or pass --allow-missing to renormalize the router over the experts present"
            )
        if self.missing_clusters:
            warnings.warn(
                f"no expert for cluster(s) {self.missing_clusters}; renormalizing the router over "
                f"clusters {sorted(ids)}",
                stacklevel=2,
            )
        k_max = len(ids)
        if strategy == "top-k" and not (isinstance(top_k, int) and 1 <= top_k <= k_max):
            raise HetdiffError(
                f"top-k needs 1 <= k <= {k_max} (the number of experts), got k={top_k!r}"
            )
        self.experts = nn.ModuleList(experts)
        self.cluster_ids = ids
        self.router = router
        self.num_clusters = int(num_clusters)
        self.strategy = strategy
        self.top_k = {"top-k": top_k, "top1": 1, "sample": 1}.get(strategy, k_max)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.record = record
        self.recorded: list[tuple[Tensor, Tensor]] = []
        self.t_range = common_t_range(list(experts))
        self._bounds: dict[torch.dtype, tuple[float, float]] = {}
        self.register_buffer("_column_ids", torch.tensor(ids, dtype=torch.long), persistent=False)

    # -- routing -------------------------------------------------------------------------------

    def weights(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Router weights over the experts present, (B, K'), rows sum to 1, columns in the order
        of ``cluster_ids``: softmax of the router logits restricted to those clusters."""
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        logits = self.router(x, t.expand(x.shape[0]) if t.ndim == 0 else t, cond)
        if logits.ndim != 2 or logits.shape != (x.shape[0], self.num_clusters):
            raise HetdiffError(
                f"router returned shape {tuple(logits.shape)}, expected ({x.shape[0]}, "
                f"{self.num_clusters}); use a router trained on the experts' partition"
            )
        present = logits.index_select(1, self._column_ids.to(logits.device))
        return torch.softmax(present.to(torch.promote_types(x.dtype, present.dtype)), dim=1)

    def choose(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Per row, the chosen expert columns (B, k) and their weights (B, k) summing to 1."""
        if self.strategy == "sample":
            draw = torch.multinomial(weights.detach().cpu().double(), 1, generator=self.generator)
            choice = draw.to(weights.device)
            return choice, torch.ones(choice.shape, dtype=weights.dtype, device=weights.device)
        # a stable sort, not topk: tied weights (an untrained router is uniform) pick the lowest
        # column on every device (CUDA's topk breaks ties in no documented order)
        choice = weights.sort(dim=1, descending=True, stable=True).indices[:, : self.top_k]
        top = weights.gather(1, choice)
        return choice, top / top.sum(dim=1, keepdim=True)

    # -- the velocity ------------------------------------------------------------------------

    def _prepare_time(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        if t.shape != (x.shape[0],):
            raise HetdiffError(f"t must be a scalar or shape ({x.shape[0]},), got {tuple(t.shape)}")
        check_t_in_range(t, *self.t_range, what="the ensemble (common range of its experts)")
        if x.dtype not in self._bounds:
            self._bounds[x.dtype] = representable_range(self.t_range, x.dtype)
        return t.clamp(*self._bounds[x.dtype])

    def forward(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        t = self._prepare_time(x, t)
        cond = as_conditioning(cond)
        weights = self.weights(x, t, cond).to(x.dtype)  # (B, K')
        if self.record:
            self.recorded.append((t.detach().cpu(), weights.detach().cpu()))
        if self.strategy == "full":
            velocity = torch.zeros_like(x)
            for j, expert in enumerate(self.experts):
                w = weights[:, j].reshape(-1, *([1] * (x.ndim - 1)))
                velocity = torch.addcmul(velocity, w, expert(x, t, cond).to(x.dtype))  # autocast
            return velocity
        return self._grouped(x, t, cond, *self.choose(weights))

    def _grouped(
        self, x: Tensor, t: Tensor, cond: Conditioning | None, choice: Tensor, chosen: Tensor
    ) -> Tensor:
        """sum over the k slots of chosen weight x chosen expert, each expert once on its rows."""
        velocity = torch.zeros_like(x)
        single = choice.shape[1] == 1
        for j, expert in enumerate(self.experts):
            hit = choice == j  # (B, k); an expert appears at most once per row
            rows = hit.any(dim=1).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            if single and rows.numel() == x.shape[0]:  # one expert takes every row: no copies
                return expert(x, t, cond).to(x.dtype)
            sub = None if cond is None else cond.index(rows)
            v = expert(x.index_select(0, rows), t.index_select(0, rows), sub)
            v = v.to(x.dtype)  # under autocast an expert answers in bf16
            if single:  # top1 / sample: the weight is exactly 1
                velocity.index_copy_(0, rows, v)
            else:
                w = (chosen * hit).sum(dim=1).index_select(0, rows)
                velocity.index_add_(0, rows, v * w.reshape(-1, *([1] * (x.ndim - 1))))
        return velocity


def representable_range(t_range: tuple[float, float], dtype: torch.dtype) -> tuple[float, float]:
    """The largest interval inside ``t_range`` whose ends are exact in ``dtype``.

    A float32 grid point at t_max can round above the float64 bound of a DDPM expert's range
    (scaled_linear: t_max = 0.9359575423 becomes 0.9359575510) and be refused by the expert's
    schedule; clamping to these ends keeps every t the experts see inside their range.
    """
    ends = torch.tensor(t_range, dtype=torch.float64).to(dtype)
    lo, hi = ends[0], ends[1]
    if float(lo) < t_range[0]:
        lo = torch.nextafter(lo, torch.tensor(1.0, dtype=dtype))
    if float(hi) > t_range[1]:
        hi = torch.nextafter(hi, torch.tensor(0.0, dtype=dtype))
    return float(lo), float(hi)


def load_ensemble(
    experts_dir: str | Path,
    router_path: str | Path,
    device: torch.device | str = "cpu",
    strategy: str = "full",
    top_k: int = 2,
    allow_missing: bool = False,
    seed: int = 0,
    record: bool = False,
) -> Ensemble:
    """Load every expert checkpoint in ``experts_dir`` and the router, check that they fit, and
    build the ensemble.

    Checks (each a one-line ``HetdiffError``): the directory holds experts; all have the same
    resolution, channels, conditioning, text encoder and latent space, matching the router's;
    experts record the router's partition (fingerprint and K); one expert per cluster
    (``allow_missing`` renormalizes over the experts present and warns); the strategy exists and
    top-k has 1 <= k <= experts (see ``check_experts_fit``).
    """
    from hetdiff.experts.build import velocity_from_spec
    from hetdiff.experts.router_store import load_router, read_router_spec, router_file
    from hetdiff.experts.store import list_experts, load_expert_model

    if strategy not in STRATEGIES:
        raise HetdiffError(
            f"unknown ensemble strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
        )
    router_spec = read_router_spec(router_path)
    entries = list_experts(experts_dir)
    if not entries:
        raise HetdiffError(
            f"no expert checkpoints in {experts_dir}; train experts into it with `hetdiff train`"
        )
    check_experts_fit(entries, router_spec, router_file(router_path))
    entries = sorted(entries, key=lambda entry: entry[1].cluster_id)
    router, _ = load_router(router_path, device)
    experts = []
    for path, _spec in entries:
        net, spec = load_expert_model(path, device=device)
        experts.append(velocity_from_spec(net.eval(), spec).to(device))
    return Ensemble(
        experts,
        [spec.cluster_id for _, spec in entries],
        router,
        router_spec.num_clusters,
        strategy=strategy,
        top_k=top_k,
        allow_missing=allow_missing,
        generator=torch.Generator().manual_seed(seed),
        record=record,
    )


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
