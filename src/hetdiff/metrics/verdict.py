"""The run's one-line verdict: does the ensemble beat its best single expert?

The rule, on the primary metric FD_judge (Frechet distance in the judge's feature space against
the held-out reference of the whole data; lower is better), with the 95% bootstrap intervals
``metrics.json`` stores as ``fd_judge_ci = [low, high]``:

- the best expert is the single expert with the lowest point FD_judge;
- an ensemble strategy **beats** it when the two intervals are disjoint and the ensemble's lies
  below (ensemble high < expert low); it **is worse** when they are disjoint the other way
  (expert high < ensemble low); otherwise the intervals overlap and the difference is **not
  resolved** at this n (the line says so; it never calls an overlap a win);
- the strategies judged are top-1 and full, those of them the run sampled (any other strategy
  sampled when neither was); a value without a stored interval counts as the interval [v, v].

Disjoint 95% intervals are a conservative test (a difference can be real while the intervals
still overlap), which is the point: the line claims only what the samples resolve. Missing
numbers (judge metrics off, no single-expert samples) give a line that says what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PRIMARY_METRIC = "fd_judge"  # lower is better
PRIMARY_METRIC_LABEL = "FD_judge"
JUDGED_STRATEGIES = ("top1", "full")  # the strategies the verdict names, in this order
OUTCOMES = ("beats", "worse", "overlap")


@dataclass(frozen=True)
class Estimate:
    """A named model's point value of the metric and its interval ``[low, high]``."""

    name: str
    value: float
    low: float
    high: float

    def text(self) -> str:
        return f"{number(self.value)} [{number(self.low)}, {number(self.high)}]"


def number(value: float) -> str:
    """A metric for a line of text: 3 significant digits, whole numbers from 100 on (no
    exponents: 1107, not 1.11e+03)."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


@dataclass(frozen=True)
class Comparison:
    """One ensemble strategy against the best single expert: ``outcome`` is ``"beats"``
    (intervals disjoint, ensemble lower), ``"worse"`` (disjoint, expert lower) or
    ``"overlap"`` (no resolved difference)."""

    ensemble: Estimate
    expert: Estimate
    outcome: str


@dataclass(frozen=True)
class Verdict:
    """The verdict's ``line`` (one line of text, starting ``verdict:``) and the comparisons it
    was made from (empty when the metrics needed are missing)."""

    line: str
    comparisons: tuple[Comparison, ...]
    metric: str = PRIMARY_METRIC


def _estimate(name: str, entry: Mapping[str, Any], metric: str) -> Estimate | None:
    value = entry.get(metric)
    if not isinstance(value, int | float) or value != value:  # absent or NaN
        return None
    low, high = entry.get(f"{metric}_ci") or (value, value)
    return Estimate(name, float(value), float(low), float(high))


def compare(ensemble: Estimate, expert: Estimate) -> str:
    """``"beats"`` if ``ensemble``'s interval lies wholly below ``expert``'s, ``"worse"`` if
    wholly above, else ``"overlap"`` (for a lower-is-better metric)."""
    if ensemble.high < expert.low:
        return "beats"
    if expert.high < ensemble.low:
        return "worse"
    return "overlap"


def _strategy_name(strategy: str) -> str:
    return "top-1" if strategy == "top1" else strategy


def _phrase(comparison: Comparison, first: bool) -> str:
    ens, exp = comparison.ensemble, comparison.expert
    subject = f"the {_strategy_name(ens.name)} ensemble's"
    subject += f" {PRIMARY_METRIC_LABEL} " if first else " "
    target = f"its best expert's ({exp.name}) {exp.text()}" if first else "it"
    if comparison.outcome == "beats":
        return f"{subject}{ens.text()} beats {target}: intervals do not overlap"
    if comparison.outcome == "worse":
        return f"{subject}{ens.text()} is worse than {target}: intervals do not overlap"
    return (
        f"{subject}{ens.text()} does not beat {target} (intervals overlap: no resolved difference)"
    )


def ensemble_verdict(
    metrics: Mapping[str, Any], strategies: Sequence[str] = JUDGED_STRATEGIES
) -> Verdict:
    """The verdict (module docstring) of a run's ``metrics`` (``metrics.json``: per-strategy
    entries under ``"strategies"``, per-expert entries under ``"experts"``, each with
    ``fd_judge`` and ``fd_judge_ci``)."""
    metric = PRIMARY_METRIC
    sampled = metrics.get("strategies") or {}
    names = [s for s in strategies if s in sampled] or list(sampled)
    ensembles = [e for s in names if (e := _estimate(s, sampled[s], metric)) is not None]
    if not ensembles:
        reason = "no strategy has FD_judge in the metrics (evaluate.judge is off?)"
        return Verdict(f"verdict: none: {reason}", ())
    experts = [
        e
        for name, entry in sorted((metrics.get("experts") or {}).items())
        if (e := _estimate(name, entry, metric)) is not None
    ]
    if not experts:
        reason = "no single expert has FD_judge to compare with (evaluate.per_expert is off?)"
        return Verdict(f"verdict: none: {reason}", ())
    best = min(experts, key=lambda e: e.value)
    comparisons = tuple(Comparison(e, best, compare(e, best)) for e in ensembles)
    phrases = [_phrase(c, i == 0) for i, c in enumerate(comparisons)]
    return Verdict("verdict: " + "; ".join(phrases), comparisons)
