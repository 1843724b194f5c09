"""The inline SVG charts parse as XML and draw what they are given."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hetdiff.report.svg import bar_chart, line_chart

NS = "{http://www.w3.org/2000/svg}"


def test_bar_lengths_are_proportional_to_values_and_names_are_escaped() -> None:
    svg = bar_chart([("monolith <1>", 80.0), ("ensemble & co", 40.0), ("missing", float("nan"))],
                    "FID", "FID (lower is better)")  # fmt: skip
    root = ET.fromstring(svg)
    rects = root.findall(f"{NS}rect")
    assert len(rects) == 2  # no bar for NaN
    widths = [float(r.get("width")) for r in rects]
    assert abs(widths[0] / widths[1] - 2.0) < 1e-2
    texts = [t.text for t in root.findall(f"{NS}text")]
    assert "monolith <1>" in texts and "ensemble & co" in texts and "missing" in texts
    assert "80" in texts and "40" in texts


def test_empty_charts_say_so() -> None:
    assert "no data" in bar_chart([("a", float("nan"))], "FID", "x")
    assert "no data" in line_chart([("a", [], [])], "loss", "step", "loss")


def test_line_chart_is_valid_svg_with_one_polyline_per_series() -> None:
    svg = line_chart([("a", [0, 1, 2], [3.0, 2.0, 1.0]), ("b", [0, 2], [1.0, 5.0])], "t", "x", "y")
    root = ET.fromstring(svg)
    assert len(root.findall(f"{NS}polyline")) == 2
