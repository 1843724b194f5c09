"""Tiny inline SVG line charts (no plotting library needed, opens offline)."""

from __future__ import annotations

import html
from collections.abc import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 460,
    height: int = 260,
    log_y: bool = False,
) -> str:
    """An SVG chart of (name, xs, ys) series with axes, min/max ticks and a legend."""
    import math

    pts = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys, strict=False) if y == y]
    if not pts:
        return f"<p>{html.escape(title)}: no data</p>"
    tf = (lambda v: math.log10(max(v, 1e-12))) if log_y else (lambda v: v)
    x_lo, x_hi = min(p[0] for p in pts), max(p[0] for p in pts)
    y_lo, y_hi = min(tf(p[1]) for p in pts), max(tf(p[1]) for p in pts)
    x_hi, y_hi = (x_hi if x_hi > x_lo else x_lo + 1), (y_hi if y_hi > y_lo else y_lo + 1)
    left, right, top, bottom = 56, 12, 28, 40
    w, h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * w

    def sy(y: float) -> float:
        return top + (1 - (tf(y) - y_lo) / (y_hi - y_lo)) * h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
        f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text x="12" y="{top + h / 2}" transform="rotate(-90 12 {top + h / 2})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>',
        f'<text x="{left}" y="{top + h + 14}" text-anchor="middle">{x_lo:.3g}</text>',
        f'<text x="{left + w}" y="{top + h + 14}" text-anchor="middle">{x_hi:.3g}</text>',
    ]
    y_ticks = (10**y_lo, 10**y_hi) if log_y else (y_lo, y_hi)
    parts.append(f'<text x="{left - 4}" y="{top + h}" text-anchor="end">{y_ticks[0]:.3g}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{y_ticks[1]:.3g}</text>')
    for i, (name, xs, ys) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(
            f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=False) if y == y
        )
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>'
        )
        ly = top + 12 + 13 * i
        parts.append(
            f'<rect x="{left + w - 120}" y="{ly - 8}" width="10" height="3" fill="{color}"/>'
        )
        parts.append(f'<text x="{left + w - 106}" y="{ly - 4}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    bars: Sequence[tuple[str, float]],
    title: str,
    value_label: str,
    width: int = 640,
    bar_height: int = 18,
) -> str:
    """An SVG chart of horizontal bars, one per (name, value), each labelled with its value;
    bar length is proportional to the value (axis from 0). NaN values draw no bar."""
    shown = [v for _, v in bars if v == v]
    if not shown:
        return f"<p>{html.escape(title)}: no data</p>"
    top_value = max(max(shown), 1e-12)
    label_w, right, top = 300, 60, 28
    w = width - label_w - right
    height = top + len(bars) * (bar_height + 6) + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
    ]
    for i, (name, value) in enumerate(bars):
        y = top + i * (bar_height + 6)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_height * 0.7:.1f}" text-anchor="end">'
            f"{html.escape(name)}</text>"
        )
        if value == value:
            length = max(value, 0.0) / top_value * w
            color = PALETTE[i % len(PALETTE)]
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{bar_height}" '
                f'fill="{color}"/>'
            )
            parts.append(
                f'<text x="{label_w + length + 4:.1f}" y="{y + bar_height * 0.7:.1f}">'
                f"{value:.4g}</text>"
            )
    parts.append(
        f'<text x="{label_w + w / 2}" y="{height - 6}" text-anchor="middle">'
        f"{html.escape(value_label)}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)
