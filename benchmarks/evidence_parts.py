"""The six parts of ``benchmarks/evidence.py``; each takes the ``Lab`` and returns a ``Section``
(markdown with its tables and verdicts, and its SVG plots). Every row's metrics come from
``Lab.evaluate`` (judged metrics with 95% bootstrap intervals), every model from ``Lab.model``.

A verdict says "A beats B" only when their 95% intervals do not overlap, "not resolved" when
they do; it is written from the numbers, claim by claim.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evidence_models import (
    DDPM_BEST,
    DDPM_PRETRAIN,
    FLOW,
    eval_ensemble,
    eval_single,
    experts,
    largest,
    settings,
)
from evidence_report import Section, cell, compare, is_pending, mean_finite, table, verdict
from hetdiff.metrics.bootstrap import mean_interval
from hetdiff.report.svg import line_chart


def part_flops(lab: Any) -> Section:
    """The monolith vs a K-expert ensemble (top1, full) at equal training FLOPs: the monolith
    trains B steps, each expert B / K steps, same batch and model."""
    a, part = lab.args, lab.partition("features")
    router = lab.router(part)
    rows, series, notes = [], {}, []
    for model in (a.model, a.small_model):
        curves: dict[str, list[dict]] = {"monolith": [], "top1": [], "full": []}
        for budget in a.budgets:
            mono = lab.model(f"{model}-monolith", settings(lab, model, FLOW, a.seed), budget)
            paths = experts(lab, model, [FLOW] * a.k, budget // a.k, part)
            gflop = lab.train_flops(model, budget) / 1e9
            found = {"monolith": eval_single(lab, f"{model} monolith {budget}", mono, model)}
            for strategy in ("top1", "full"):
                found[strategy] = eval_ensemble(
                    lab, f"{model} ensemble {budget} {strategy}", paths, router, strategy, model
                )
            for name, m in found.items():
                curves[name].append(m)
                what = "monolith" if name == "monolith" else f"{a.k} experts, {name}"
                rows.append(([model, what, str(budget), f"{gflop:,.0f}"], m))
        xs = [math.log10(lab.train_flops(model, b)) for b in a.budgets]
        for name, ms in curves.items():
            series[f"{model} {name}"] = (xs, [m["fd_judge"] for m in ms])
        notes.append(flops_notes(model, a.budgets, curves))
    head = ["model", "arm", "monolith steps B", "training GFLOP"]
    text = (
        f"Each expert trains B / {a.k} steps on its feature cluster, the monolith B steps on "
        f"all data; same batch ({a.batch}) and network, so training FLOPs are equal "
        f"(3 x forward x batch x steps; the router, {a.router_steps} steps, is not "
        "counted, as in DDM). Rows per budget and model size:\n\n"
        + table(rows, head)
        + "\n\n"
        + "\n".join(notes)
        + "\n\n![FD_judge against training FLOPs](evidence/flops_fd.svg)\n"
    )
    chart = line_chart(
        [(n, xs, ys) for n, (xs, ys) in series.items()],
        "FD_judge vs training FLOPs",
        "log10 training FLOPs",
        "FD_judge",
    )
    return Section("FLOP for FLOP: monolith against ensembles (DDM)", text, {"flops_fd.svg": chart})


def flops_notes(model: str, budgets: list[int], curves: dict[str, list[dict]]) -> str:
    mono = curves["monolith"]
    flat = compare(mono[-1], mono[-2]) == 0 if len(mono) >= 2 else False
    lines = [
        f"- **{model}**: from B = {budgets[-2]} to {budgets[-1]} the monolith's FD_judge went "
        f"{cell(mono[-2], 'fd_judge', 2)} -> {cell(mono[-1], 'fd_judge', 2)}: "
        + (
            "pending."
            if is_pending(mono[-1]) or is_pending(mono[-2])
            else "flattened (intervals overlap)."
            if flat
            else "still improving (intervals "
            "disjoint): larger budgets are needed for the regime DDM's claim is about."
        )
    ]
    for strategy in ("top1", "full"):
        wins = [
            b
            for b, e, m in zip(budgets, curves[strategy], mono, strict=True)
            if compare(e, m) == -1
        ]
        loses = [
            b for b, e, m in zip(budgets, curves[strategy], mono, strict=True) if compare(e, m) == 1
        ]
        if wins:
            state = f"beats the monolith at B = {', '.join(map(str, wins))} (crossover)"
        elif loses:
            state = f"trails the monolith at B = {', '.join(map(str, loses))}; no crossover"
        else:
            state = "is not separated from the monolith at any budget"
        lines.append(f"- {model}, ensemble {strategy}: {state}.")
    return "\n".join(lines)


def part_mixed(lab: Any) -> Section:
    """All-flow against 1 DDPM : 3 flow and 2 DDPM : 2 flow at the largest budget."""
    a, part = lab.args, lab.partition("features")
    router, (budget, steps) = lab.router(part), largest(lab)
    mixes = {
        "all flow (4 : 0)": [FLOW] * 4,
        "1 DDPM : 3 flow": [DDPM_BEST, FLOW, FLOW, FLOW],
        "2 DDPM : 2 flow": [DDPM_BEST, FLOW, DDPM_BEST, FLOW],
    }
    if a.k != 4:
        mixes = {"all flow": [FLOW] * a.k, "1 DDPM": [DDPM_BEST] + [FLOW] * (a.k - 1)}
    rows, found = [], {}
    for name, objectives in mixes.items():
        paths = experts(lab, a.model, objectives, steps, part)
        for strategy in ("top1", "full"):
            m = eval_ensemble(
                lab, f"{a.model} mix {name} {strategy}", paths, router, strategy, a.model
            )
            found[(name, strategy)] = m
            rows.append(([name, strategy], m))
    base = next(iter(mixes))
    claims = [
        f"- {verdict(name, found[(name, s)], base, found[(base, s)])} ({s})."
        for name in list(mixes)[1:]
        for s in ("top1", "full")
    ]
    intro = (
        f"{a.model} experts, {steps} steps each (B = {budget}); DDPM experts in their best "
        f"measured setting ({DDPM_BEST['prediction']}-prediction, {DDPM_BEST['schedule']} "
        "schedule). HDDM's claim: a mix does at least as well as all-flow."
    )
    return comparison("Mixed against homogeneous objectives (HDDM)", intro, rows,
                      ["experts", "strategy"], claims)  # fmt: skip


def comparison(
    title: str, intro: str, rows: list, columns: list[str], claims: list[str]
) -> Section:
    """A section comparing arms: the intro, the table of ``rows`` under ``columns``, a claim
    per line."""
    return Section(title, f"{intro}\n\n{table(rows, columns)}\n\n" + "\n".join(claims) + "\n")


def part_partition(lab: Any) -> Section:
    """Feature clusters against a seeded random partition, same budget and experts."""
    a, (budget, steps) = lab.args, largest(lab)
    rows, found = [], {}
    for kind in ("features", "random"):
        part = lab.partition(kind)
        router, paths = lab.router(part), experts(lab, a.model, [FLOW] * a.k, steps, part)
        for strategy in ("top1", "full"):
            m = eval_ensemble(lab, f"{a.model} {kind} {strategy}", paths, router, strategy, a.model)
            found[(kind, strategy)] = m
            rows.append(([kind, strategy], m))
    claims = [
        f"- {verdict('feature clusters', found[('features', s)], 'random', found[('random', s)])}"
        f" ({s})."
        for s in ("top1", "full")
    ]
    intro = (
        f"{a.k} flow experts ({a.model}, {steps} steps each, B = {budget}) on feature "
        f"clusters ({a.features}) or on a random split, each with its own router."
    )
    return comparison("Feature clusters against a random partition", intro, rows,
                      ["partition", "strategy"], claims)  # fmt: skip


def part_strategies(lab: Any) -> Section:
    """Router strategies on the all-flow feature-cluster ensemble at the largest budget."""
    a, part, (budget, steps) = lab.args, lab.partition("features"), largest(lab)
    router, paths = lab.router(part), experts(lab, a.model, [FLOW] * a.k, steps, part)
    rows = []
    for strategy in ("full", "top-k", "top1", "sample", "nucleus"):
        m = eval_ensemble(
            lab, f"{a.model} ensemble {budget} {strategy}", paths, router, strategy, a.model
        )
        gflops = m.get("gflops_per_sample", math.nan)
        rows.append(([strategy, f"{gflops:.3f}"], m))
    text = (
        f"{a.k} flow experts ({a.model}, {steps} steps each) and their router; top-k with "
        f"k = {a.top_k}, nucleus with the default top_p. "
        f"Sampling GFLOPs per sample counted by torch's FlopCounter over {a.sample_steps} "
        f"{a.solver} steps of generation (router included).\n\n"
        + table(rows, ["strategy", "GFLOPs / sample"])
        + "\n"
    )
    return Section("Router strategies and their cost", text)


def part_warmstart(lab: Any) -> Section:
    """A DDPM-eps model pretrained on other data, converted to flow (adapter or re-headed) and
    fine-tuned on each cluster, against a scratch flow expert; unconditional (the pretraining
    data's classes are not ours), scored against each cluster's own real images."""
    a, part = lab.args, lab.partition("features")
    model, total = a.warm_model, a.warm_steps
    pre = settings(lab, model, DDPM_PRETRAIN, a.seed, conditional=False)
    source = lab.model(f"{model}-ddpm-eps-pretrain", pre, a.pretrain_steps, data=a.pretrain_data)
    inits = {
        "scratch": None,
        "converted": lab.converted(source, False),
        "converted + rehead": lab.converted(source, True),
    }
    checkpoints = sorted({max(1, total * (i + 1) // a.warm_evals) for i in range(a.warm_evals)})
    rows, reach, curves = [], [], {arm: [] for arm in inits}
    for k in range(a.k):
        fds: dict[str, dict[int, dict]] = {}
        for arm, init in inits.items():
            fds[arm] = {}
            if arm == "converted":  # step 0: the converted model as it is
                fds[arm][0] = eval_single(lab, f"warm {arm} c{k} 0", init, model, False, k)
            for step in checkpoints:
                flow = settings(lab, model, FLOW, a.seed + k, conditional=False)
                path = lab.model(f"{model}-warm-{arm}-c{k}", flow, step, part, k, init)
                fds[arm][step] = eval_single(lab, f"warm {arm} c{k} {step}", path, model, False, k)
            curves[arm].append([fds[arm][s]["fd_judge_own_cluster"] for s in checkpoints])
        target = fds["scratch"][checkpoints[-1]]
        for arm, by_step in fds.items():
            lead = [str(k), arm] + [
                cell(by_step[s], "fd_judge_own_cluster", 2) if s in by_step else "-"
                for s in [0, *checkpoints]
            ]
            first = next(
                (
                    s
                    for s in sorted(by_step)
                    if by_step[s]["fd_judge_own_cluster"] <= target["fd_judge_own_cluster"]
                ),
                None,
            )
            rows.append(
                "| "
                + " | ".join(lead + [str(first) if first is not None else "not reached"])
                + " |"
            )
            if arm != "scratch":
                reach.append((arm, k, first))
    head = [
        "cluster",
        "arm",
        "step 0",
        *[f"step {s}" for s in checkpoints],
        "first step <= scratch final",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows]
    summary = []
    for arm in list(inits)[1:]:
        steps = [s for name, _, s in reach if name == arm]
        got = [s for s in steps if s is not None]
        frac = ", ".join(f"{s / total:.2f}" for s in got) or "none"
        summary.append(
            f"- {arm}: reaches the scratch expert's final FD (point values) on "
            f"{len(got)} of {len(steps)} clusters; steps as a fraction of {total}: {frac}."
        )
    xs = checkpoints
    chart = line_chart(
        [
            (arm, xs, [mean_finite(col) for col in zip(*c, strict=True)])
            for arm, c in curves.items()
        ],
        "warm start: FD_judge to own cluster (mean over clusters)",
        "flow steps",
        "FD_judge",
    )
    text = (
        f"Pretraining: {model} DDPM (eps, linear) on {a.pretrain_data} for {a.pretrain_steps} "
        f"steps, unconditional; converted with `hetdiff convert --to flow` (adapter) and with "
        f"`--rehead`; then {total} flow steps per cluster, against scratch with the same seed, "
        "data order and noise. Cells: FD_judge of n unconditional samples against the cluster's "
        "own held-out real images. HDDM's claim: the warm start reaches scratch quality in a "
        "fraction of the steps.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(summary)
        + "\n\n![warm start](evidence/warmstart_fd.svg)\n"
    )
    return Section(
        "Warm start from a DDPM pretrained elsewhere (HDDM)", text, {"warmstart_fd.svg": chart}
    )


def part_decomposition(lab: Any) -> Section:
    """DDM Fig. 5 as a number: the monolith's and an ensemble's samples from the same noise
    (deterministic ODE sampler, same label) against pairs from different noise (same label)."""
    a, part, (budget, steps) = lab.args, lab.partition("features"), largest(lab)
    mono = lab.model(f"{a.model}-monolith", settings(lab, a.model, FLOW, a.seed), budget)
    router, paths = lab.router(part), experts(lab, a.model, [FLOW] * a.k, steps, part)
    m_mono = eval_single(lab, f"{a.model} monolith {budget}", mono, a.model)
    rows, claims = [], []
    for strategy in ("full", "top1"):
        m_ens = eval_ensemble(
            lab, f"{a.model} ensemble {budget} {strategy}", paths, router, strategy, a.model
        )
        x, y = lab.samples(m_mono), lab.samples(m_ens)
        found = {} if x is None else pair_distances(lab, x, y)
        rows.append(
            f"| monolith vs ensemble ({strategy}) | "
            + " | ".join(
                cell(found, key)
                for key in ("judge_same", "judge_different", "pixel_same", "pixel_different")
            )
            + " |"
        )
        for space in ("judge", "pixel"):
            same = {
                "d": found.get(f"{space}_same", math.nan),
                "d_ci": found.get(f"{space}_same_ci", [math.nan] * 2),
            }
            other = {
                "d": found.get(f"{space}_different", math.nan),
                "d_ci": found.get(f"{space}_different_ci", [math.nan] * 2),
            }
            state = {
                -1: "holds: same-noise pairs are closer",
                1: "does not hold: same-noise pairs are farther apart",
                0: "not resolved (intervals overlap)",
            }[compare(same, other, "d")]
            claims.append(f"- {strategy}, {space} distance: {state}.")
    text = (
        f"The monolith (B = {budget}) and the {a.k}-expert flow ensemble sample with "
        f"{a.sample_steps} {a.solver} steps (a deterministic ODE solver) from seeds "
        f"{lab.seeds[0]}+i with the same labels. Same noise: pair i with i; different noise: pair "
        "i with the next sample of the same class. Mean L2 distance of judge features and "
        "RMS pixel distance, with 95% intervals; DDM's claim holds when same-noise pairs "
        "are closer.\n\n| pair | judge, same noise | judge, different noise | pixels, same "
        "noise | pixels, different noise |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n"
        + "\n".join(claims)
        + "\n"
    )
    return Section("Same noise, same image? (DDM's decomposition)", text)


def pair_distances(lab: Any, x: Any, y: Any) -> dict[str, Any]:
    """Mean distances (with intervals) of same-noise pairs (x_i, y_i) and different-noise pairs
    (x_i, y_j), j the next index with the same label (cyclic within the class)."""
    labels = lab.labels.numpy()
    other = np.arange(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        other[idx] = np.roll(idx, -1)
    keep = other != np.arange(len(labels))
    fx, fy = lab.reference.judge.features(x), lab.reference.judge.features(y)
    px, py = x.reshape(len(x), -1).double().numpy(), y.reshape(len(y), -1).double().numpy()
    out: dict[str, Any] = {}
    for name, (u, v) in {"judge": (fx, fy), "pixel": (px, py)}.items():
        scale = 1.0 if name == "judge" else 1.0 / math.sqrt(u.shape[1])
        for pairing, j in (("same", np.arange(len(u))), ("different", other)):
            d = np.linalg.norm(u[keep] - v[j[keep]], axis=1) * scale
            iv = mean_interval(d, draws=lab.args.bootstrap, seed=lab.args.seed)
            out[f"{name}_{pairing}"], out[f"{name}_{pairing}_ci"] = iv.value, [iv.low, iv.high]
    return out


PARTS = {
    "flops": part_flops,
    "mixed": part_mixed,
    "partition": part_partition,
    "strategies": part_strategies,
    "warmstart": part_warmstart,
    "decomposition": part_decomposition,
}
