"""What the ensemble costs at sampling time, against single experts. Three ratios, one run:

1. top1 ensemble / single expert   (target <= 1.15): Euler sampling of the same noise with the
   same batch, steps and time grid; the ensemble includes its router and the grouping
   (index_select per expert, index_copy back). Every expert has the same architecture, so each
   row costs one expert pass either way.
2. full ensemble / sum of the K single-expert runs   (target <= 1.05): full runs all K experts on
   every row; the denominator is the K experts sampled one after another (K x single when they
   cost the same), so the ratio is the router plus the weighting.
3. DDPM conversion overhead   (target <= 2 %): the work ``DDPMVelocity`` adds around a network
   (time check, input scaling, fractional step from its schedule table, eps -> v), timed as the
   adapter around a no-op network, over the DDPM expert's network called directly on
   precomputed (x_s, s). Timing the adapter around the real network minus the network would
   measure the same work, buried in the network's run-to-run noise.

Experts are DiTs with random weights (the cost does not depend on training); the router is the
default ``Router`` with random weights plus a fixed bias that splits the batch evenly over the
K experts (see ``SpreadRouter``), the worst case for top1's grouping. The experts mix
objectives: flow, DDPM-eps on linear, DDPM-v on cosine, DDPM-x0 on scaled-linear (repeating).

Ratios 1 and 2 are also estimated in isolation ("isolated_estimates"): the ensemble's own work per
evaluation (router, grouping, weighting) timed around experts that cost nothing, over one (top1)
or K (full) expert evaluations; this excludes any change in the experts' speed from smaller
batches (top1 gives each expert B/K rows) but is far less sensitive to machine load.

Timing: all variants run in this process, interleaved over ``--rounds`` rounds after one untimed
warm-up round; ratios 1 and 2 are the median over rounds of the ratio within a round (damps load
from other processes); ratio 3 uses medians over ``--calls`` alternating pairs. torch uses
``--threads`` threads.

Usage:
    python benchmarks/ensemble_cost.py                     # small DiT, K=4, batch 64, 10 steps
    python benchmarks/ensemble_cost.py --model tiny --batch 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from hetdiff.models.dit import DiT, dit_config
from hetdiff.models.router import Router, RouterConfig
from hetdiff.objectives.schedules import make_schedule
from hetdiff.objectives.velocity import DDPMVelocity, FlowVelocity, VelocityModel
from hetdiff.sampling.ensemble import Ensemble, representable_range
from hetdiff.sampling.solvers import solve

KINDS = [None, ("linear", "eps"), ("cosine", "v"), ("scaled_linear", "x0")]


def build_experts(args: argparse.Namespace) -> list[VelocityModel]:
    experts: list[VelocityModel] = []
    for j in range(args.k):
        torch.manual_seed(j)
        net = DiT(dit_config(args.model, input_size=args.res, in_channels=args.channels)).eval()
        for p in net.parameters():  # nonzero outputs (zero-initialized heads would give v = 0)
            p.data.normal_(0, 0.02)
        kind = KINDS[j % len(KINDS)]
        if kind is None:
            experts.append(FlowVelocity(net))
        else:
            schedule = make_schedule(kind[0])
            experts.append(DDPMVelocity(net, schedule, kind[1]))
    return experts


class NoOp(torch.nn.Module):
    """A network that costs nothing: what remains of an adapter call is the conversion."""

    def forward(self, x: torch.Tensor, step: torch.Tensor, cond: object = None) -> torch.Tensor:
        return x


class SpreadRouter(torch.nn.Module):
    """The default ``Router`` (random weights, its full cost is paid) plus a large fixed
    one-hot bias on cluster ``row % K``: top1 splits the batch evenly over the K experts, the
    worst case for grouping (a random-weight router would send every row to one expert)."""

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        torch.manual_seed(100)
        self.router = Router(RouterConfig(args.k, args.res, args.channels)).eval()
        for p in self.router.parameters():
            p.data.normal_(0, 0.3)
        spread = torch.arange(args.batch) % args.k
        self.register_buffer("bias", 50.0 * torch.nn.functional.one_hot(spread, args.k).float())

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        return self.router(x, t, cond) + self.bias[: x.shape[0]]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", help="named DiT config of every expert")
    parser.add_argument("--k", type=int, default=4, help="number of experts / clusters")
    parser.add_argument("--res", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="Euler steps per sampling run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--calls", type=int, default=100, help="adapter/direct call pairs (ratio 3)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    experts, router = build_experts(args), SpreadRouter(args)
    top1 = Ensemble(experts, range(args.k), router, args.k, strategy="top1")
    full = Ensemble(experts, range(args.k), router, args.k, strategy="full")
    t_range = representable_range(top1.t_range, torch.float32)  # float32 grid inside every range
    noise = torch.randn(args.batch, args.channels, args.res, args.res)

    def sample(velocity: Callable) -> Callable[[], object]:
        return lambda: solve(velocity, noise, args.steps, t_range=t_range)

    with torch.no_grad():
        shares = torch.bincount(
            top1.weights(noise, torch.full((args.batch,), t_range[1])).argmax(1), minlength=args.k
        )

    # ratio 3: one DDPM expert's network on precomputed (x_s, s) vs the conversion around it
    ddpm = next(e for e in experts if isinstance(e, DDPMVelocity))
    t = torch.full((args.batch,), 0.5)
    scale = torch.sqrt((1 - t) ** 2 + t**2)
    x_s, step = noise / scale.reshape(-1, 1, 1, 1), ddpm.schedule.step_of_t(t)

    variants: dict[str, Callable[[], object]] = {
        "single": sample(experts[0]),
        "top1": sample(top1),
        "full": sample(full),
        **{f"expert{j}": sample(e) for j, e in enumerate(experts)},
    }
    bare = DDPMVelocity(NoOp(), ddpm.schedule, ddpm.prediction)  # the conversion's work alone

    def conversion_call() -> object:
        return bare(noise, t)

    def network_call() -> object:
        return ddpm.net(x_s, step, None)

    # the ensembles' own work (router, grouping, weighting) around experts that cost nothing
    free = [FlowVelocity(NoOp()) for _ in range(args.k)]
    own_work = {
        strategy: Ensemble(free, range(args.k), router, args.k, strategy=strategy)
        for strategy in ("top1", "full")
    }
    t_top = torch.full((args.batch,), t_range[1])

    times: dict[str, list[float]] = {name: [] for name in variants}
    pairs: list[tuple[float, float]] = []
    own: dict[str, list[float]] = {"top1": [], "full": [], "expert": []}
    with torch.no_grad():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(timed(fn))
        # ratio 3: (conversion, network) pairs, alternating which goes first
        for i in range(args.calls):
            if i % 2:
                network, conversion = timed(network_call), timed(conversion_call)
            else:
                conversion, network = timed(conversion_call), timed(network_call)
            pairs.append((conversion, network))
            for strategy, ensemble in own_work.items():
                own[strategy].append(timed(lambda e=ensemble: e(noise, t_top)))
            own["expert"].append(timed(lambda: experts[0](noise, t_top)))

    med = {name: statistics.median(values) for name, values in times.items()}
    med["conversion_call"] = statistics.median(c for c, _ in pairs)
    med["network_call"] = statistics.median(n for _, n in pairs)
    per_round = {  # ratios within each round, so slow phases of the machine cancel
        "top1_over_single": [a / b for a, b in zip(times["top1"], times["single"], strict=True)],
        "full_over_k_single": [
            full_s / sum(times[f"expert{j}"][r] for j in range(args.k))
            for r, full_s in enumerate(times["full"])
        ],
    }
    results = {name: statistics.median(values) for name, values in per_round.items()}
    expert_call = statistics.median(own["expert"])
    med.update(
        {f"{k}_own_work_call": statistics.median(v) for k, v in own.items() if k != "expert"}
    )
    med["expert_call"] = expert_call
    isolated = {  # 1 + the ensemble's own work per evaluation over the experts' work
        "top1_over_single": 1 + med["top1_own_work_call"] / expert_call,
        "full_over_k_single": 1 + med["full_own_work_call"] / (args.k * expert_call),
    }
    results["ddpm_conversion_overhead"] = med["conversion_call"] / med["network_call"]
    targets = {
        "top1_over_single": 1.15,
        "full_over_k_single": 1.05,
        "ddpm_conversion_overhead": 0.02,
    }
    report = {"settings": vars(args), "top1_rows_per_expert": shares.tolist(), "median_s": med}
    report["per_round_ratios"] = per_round
    report["isolated_estimates"] = isolated
    print(json.dumps(report, indent=1))
    for name, value in results.items():
        verdict = "meets" if value <= targets[name] else "MISSES"
        print(f"{name:26s} {value:8.4f}   target <= {targets[name]:.2f}   {verdict}")


if __name__ == "__main__":
    main()
