"""Tables and verdicts of ``benchmarks/evidence.py``: cells with 95% intervals, metric tables,
interval comparisons (one arm beats another only when their intervals do not overlap)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

COLUMNS = ("fd_judge", "precision", "recall", "coverage", "class_accuracy")


@dataclass
class Section:
    title: str
    text: str
    plots: dict[str, str] = field(default_factory=dict)  # file name -> SVG


def cell(m: dict[str, Any], key: str, digits: int = 3) -> str:
    value, ci = m.get(key, math.nan), m.get(f"{key}_ci", [math.nan, math.nan])
    if value is None or not isinstance(value, int | float) or math.isnan(value):
        return "pending" if isinstance(value, float) else "-"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def tv_cell(m: dict[str, Any]) -> str:
    clusters = m.get("clusters")
    return cell(clusters, "total_variation") if isinstance(clusters, dict) else "-"


def table(rows: list[tuple[list[str], dict[str, Any]]], head: list[str]) -> str:
    """Markdown rows of leading cells + the metric columns (FD_judge with 2 digits)."""
    names = ["FD_judge", "precision", "recall", "coverage", "class accuracy", "cluster TV"]
    lines = ["| " + " | ".join(head + names) + " |", "|" + "---|" * (len(head) + len(names))]
    for lead, m in rows:
        values = [cell(m, "fd_judge", 2)] + [cell(m, k) for k in COLUMNS[1:]] + [tv_cell(m)]
        lines.append("| " + " | ".join(lead + values) + " |")
    return "\n".join(lines)


def compare(a: dict[str, Any], b: dict[str, Any], key: str = "fd_judge") -> int:
    """-1: a is better (lower) than b with disjoint intervals; 1: worse; 0: not resolved."""
    (a_lo, a_hi), (b_lo, b_hi) = (
        a.get(f"{key}_ci", [math.nan] * 2),
        b.get(f"{key}_ci", [math.nan] * 2),
    )
    if any(isinstance(v, float) and math.isnan(v) for v in (a_lo, a_hi, b_lo, b_hi)):
        return 0
    return -1 if a_hi < b_lo else 1 if b_hi < a_lo else 0


def is_pending(m: dict[str, Any], key: str = "fd_judge") -> bool:
    """True for a row not evaluated yet (``--report-only``): its value is NaN."""
    value = m.get(key, math.nan)
    return isinstance(value, float) and math.isnan(value)


def verdict(a_name: str, a: dict, b_name: str, b: dict, key: str = "fd_judge") -> str:
    if is_pending(a, key) or is_pending(b, key):
        return f"{a_name} against {b_name} on {key}: pending"
    word = {-1: "beats", 1: "trails", 0: "is not separated from"}[compare(a, b, key)]
    return f"{a_name} {word} {b_name} on {key} ({cell(a, key, 2)} vs {cell(b, key, 2)})"


def mean_finite(values: Any) -> float:
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
