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
    nucleus per row the fewest largest weights summing to >= top_p, renormalized (a data-
            dependent k; top_p = 1 keeps every expert: it is "full")

The selections are pure functions of the weights (``hetdiff.sampling.selection``). top-k, top1,
sample and nucleus group the batch by chosen expert: each expert runs once per evaluation on
just its rows (``index_select``; a whole batch for one expert goes through uncopied), and the
results are scattered back, so top1 costs one expert pass over the batch plus the router.
``sample`` draws on the CPU from the ensemble's own seeded ``torch.Generator``, so the draws
depend on the seed only (not on the device). ``expert_usage`` counts the rows each expert ran
on: nucleus's cost (its FLOPs) depends on the data, so it is measured.
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
from hetdiff.config import STRATEGIES, SampleSettings
from hetdiff.errors import HetdiffError
from hetdiff.objectives.schedules import check_t_in_range
from hetdiff.objectives.velocity import VelocityModel, common_t_range
from hetdiff.sampling.fit import check_experts_fit
from hetdiff.sampling.selection import nucleus_choice, sample_choice, top_k_choice

TOP_P = SampleSettings.top_p  # nucleus's default top_p (hetdiff.config)

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
        top_p: the weight "nucleus" keeps, in (0, 1].
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
        top_p: float = TOP_P,
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
        numeric = isinstance(top_p, int | float) and not isinstance(top_p, bool)
        if strategy == "nucleus" and not (numeric and 0 < top_p <= 1):
            raise HetdiffError(f"nucleus needs top_p in (0, 1], got top_p={top_p!r}")
        self.experts = nn.ModuleList(experts)
        self.cluster_ids = ids
        self.router = router
        self.num_clusters = int(num_clusters)
        self.strategy = strategy
        self.top_k = {"top-k": top_k, "top1": 1, "sample": 1}.get(strategy, k_max)
        self.top_p = float(top_p)
        self.usage_rows = torch.zeros(k_max, dtype=torch.float64)  # rows each expert ran on
        self.evaluated_rows = 0  # rows the ensemble evaluated
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
        """Per row, the chosen expert columns (B, m) and their weights (B, m) summing to 1
        (nucleus pads with column -1, weight 0; ``hetdiff.sampling.selection``)."""
        if self.strategy == "sample":
            return sample_choice(weights, self.generator)
        if self.strategy == "nucleus":
            return nucleus_choice(weights, self.top_p)
        return top_k_choice(weights, self.top_k)

    def expert_usage(self) -> Tensor:
        """Mean evaluations of each expert per row per ensemble evaluation since the last
        ``reset_usage``, (K',) float64 in the column order; its sum is the mean number of
        experts run (K' for full, 1 for top1 and sample, the mean nucleus size for nucleus)."""
        return self.usage_rows / max(self.evaluated_rows, 1)

    def reset_usage(self) -> None:
        self.usage_rows.zero_()
        self.evaluated_rows = 0

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
        self.evaluated_rows += x.shape[0]
        if self.strategy == "full" or (self.strategy == "nucleus" and self.top_p >= 1):
            self.usage_rows += x.shape[0]
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
            self.usage_rows[j] += rows.numel()
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
    top_p: float = TOP_P,
) -> Ensemble:
    """Load every expert checkpoint in ``experts_dir`` and the router, check that they fit, and
    build the ensemble.

    Checks (each a one-line ``HetdiffError``): the directory holds experts; all have the same
    resolution, channels, conditioning, text encoder and latent space, matching the router's;
    experts record the router's partition (fingerprint and K); one expert per cluster
    (``allow_missing`` renormalizes over the experts present and warns); the strategy exists,
    top-k has 1 <= k <= experts and nucleus 0 < top_p <= 1 (see ``check_experts_fit``).
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
        top_p=top_p,
    )
