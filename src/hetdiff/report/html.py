"""The run report: one self-contained ``report.html`` (images inlined as data URIs), written from
a ``RunRecord`` (``hetdiff.report.record``)."""

from __future__ import annotations

import base64
import html
import json
import struct
from pathlib import Path
from typing import Any

from hetdiff.io import atomic_write_text
from hetdiff.report.record import ClassGrids, RunRecord
from hetdiff.report.svg import line_chart

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right} th{background:#f4f4f4} pre{background:#f7f7f7;padding:.8em;overflow:auto;
font-size:.8em;max-height:22em} .grids{display:flex;flex-wrap:wrap;gap:1em}
.grids figure{margin:0} figcaption{text-align:center;font-size:.9em}
img.pix{image-rendering:pixelated;width:300px}
img.row{image-rendering:pixelated;display:block} table.classrows td,table.classrows th{border:0;
padding:1px 6px 1px 0;text-align:left;font-weight:normal;background:none;white-space:nowrap}
table.classrows th{font-size:.85em} .count{color:#777} td.none{color:#999;font-size:.8em}
table.judged td:first-child{white-space:nowrap} .ci{font-size:.8em;color:#777;white-space:nowrap}
p.verdict{background:#f4f8ff;border-left:4px solid #1f77b4;padding:.5em .8em}
"""


def _img(path: Path, css_class: str = "pix", alt: str = "") -> str:
    if not path.is_file():
        return f"<p>missing: {html.escape(path.name)}</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _loss_series(log_path: Path) -> tuple[list[float], list[float]]:
    steps, losses = [], []
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in row and "step" in row:
                steps.append(float(row["step"]))
                losses.append(float(row["loss"]))
    return steps, losses


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _prompt_figures(record: RunRecord) -> list[str]:
    """A text run's grids, one figure per prompt with the prompt as its caption (none for a
    class-conditional run)."""
    if not record.prompts:
        return []
    strategy = html.escape(str(record.prompt_strategy or ""))
    parts = [f"<h3>Prompts (ensemble, strategy <b>{strategy}</b>)</h3><div class='grids'>"]
    for entry in record.prompts:
        parts.append(f"<figure>{_img(entry.grid, alt=entry.prompt)}"
                     f"<figcaption>&ldquo;{html.escape(entry.prompt)}&rdquo;</figcaption></figure>")  # fmt: skip
    parts.append("</div>")
    return parts


def _router_weight_charts(weights: dict[str, Any] | None) -> list[str]:
    """Router weights over t, one chart per recorded sample (at most 2)."""
    if not weights or not weights.get("weights"):
        return []
    ts, steps = weights["t"], weights["weights"]
    charts = []
    for sample in range(min(2, len(steps[0]))):
        per_cluster = [
            (f"cluster {j}", ts, [w[sample][j] for w in steps])
            for j in range(len(steps[0][sample]))
        ]
        charts.append(line_chart(per_cluster, f"router weights, sample {sample}", "t", "weight"))
    return charts


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk (bytes 16-24, big-endian)."""
    return struct.unpack(">II", data[16:24])


def _class_grids(grids: ClassGrids | None) -> list[str]:
    """Each strategy's samples by class: a table with the class name beside its row of images.
    Every row PNG has the same height, drawn at one integer scale (about 40 px a row), so a row
    of fewer images is shorter, not stretched, and every table row has one height."""
    if grids is None or not grids.strategies:
        return []
    pngs = {
        row.grid: row.grid.read_bytes()
        for grid in grids.strategies
        for row in grid.rows
        if row.grid is not None and row.grid.is_file()
    }
    row_height = _png_size(next(iter(pngs.values())))[1] if pngs else 1
    scale = max(1, round(40 / row_height))  # integer: crisp pixels
    first = grids.strategies[0]
    shown = len(first.rows)
    parts = [
        "<h3 id='samples-by-class'>Samples by class</h3>",
        f"<p class='classes-note'>One row per class: the first {grids.per_class} of each "
        f"strategy's {first.n} samples drawn for that class (labels are drawn with the data's "
        "class frequencies, so rows differ in length; in brackets, how many of the samples asked "
        f"for the class). Showing {shown} of {grids.num_classes} classes"
        + ("." if shown == grids.num_classes else " (the first ones drawn).")
        + "</p><div class='grids'>",
    ]
    for grid in grids.strategies:
        name = html.escape(grid.strategy)
        parts.append(f"<figure class='classes' data-strategy='{name}'><figcaption>ensemble, "
                     f"strategy <b>{name}</b>, by class</figcaption><table class='classrows'>")  # fmt: skip
        for row in grid.rows:
            tr = (f"<tr style='height:{row_height * scale}px'><th scope='row' class='cls'>"
                  f"{html.escape(row.name)} <span class='count'>({row.count})</span></th>")  # fmt: skip
            if row.grid is None:
                parts.append(f"{tr}<td class='none'>none drawn</td></tr>")
            elif row.grid not in pngs:
                parts.append(
                    f"{tr}<td class='none'>missing: {html.escape(row.grid.name)}</td></tr>"
                )
            else:
                data = pngs[row.grid]
                encoded = base64.b64encode(data).decode()
                parts.append(f'{tr}<td><img class="row" width="{_png_size(data)[0] * scale}" '
                             f'alt="{name}: {html.escape(row.name)}" '
                             f'src="data:image/png;base64,{encoded}"></td></tr>')  # fmt: skip
        parts.append("</table></figure>")
    parts.append("</div>")
    return parts


JUDGE_COLUMNS = (
    ("fd_judge", "FD_judge"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("density", "density"),
    ("coverage", "coverage"),
    ("class_accuracy", "class accuracy"),
    ("fd_judge_own_cluster", "FD_judge own cluster"),
)


def _with_interval(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, int | float):
        return "&mdash;"
    interval = entry.get(f"{key}_ci")
    if not interval:
        return _number(value)
    low, high = (_number(bound) for bound in interval)
    return f"{_number(value)}<br><span class='ci'>[{low}, {high}]</span>"


def _number(value: float) -> str:
    """3 significant digits, whole numbers from 100 on (1107, not 1.11e+03)."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _judge_table(record: RunRecord) -> list[str]:
    """The ensemble strategies and each single expert on the judge metrics, each value with its
    95% interval; nothing when the run measured none."""
    metrics = record.metrics
    strategies = metrics.get("strategies", {})
    experts = metrics.get("experts", {})
    order = [name for name, _ in record.strategy_grids if name in strategies]
    order += [name for name in strategies if name not in order]
    rows = [(f"ensemble, {name}", strategies[name]) for name in order]
    rows += [(f"expert {entry.get('cluster', name)} alone", entry)
             for name, entry in sorted(experts.items())]  # fmt: skip
    if not any("fd_judge" in entry for _, entry in rows):
        return []
    head = "".join(f"<th>{label}</th>" for label in ("model", "n", *dict(JUDGE_COLUMNS).values()))
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_fmt(entry.get('n', ''))}</td>"
        + "".join(f"<td>{_with_interval(entry, key)}</td>" for key, _ in JUDGE_COLUMNS)
        + "</tr>"
        for name, entry in rows
    )
    judge = metrics.get("judge", {})
    return [
        "<h3>Ensemble against each single expert (judge metrics)</h3>",
        f"<table class='judged'><tr>{head}</tr>{body}</table>",
        "<p>Each value with its 95% bootstrap interval. FD_judge: Frechet distance in the feature "
        f"space of the judge ({html.escape(str(judge.get('features', 'judge')))}, a classifier "
        "trained on the data's labels) against held-out real images of the whole data; lower is "
        "better. Precision, recall, density, coverage: k-NN manifolds (Kynk&auml;&auml;nniemi et "
        "al. 2019, Naeem et al. 2020); higher is better (density near 1 for real data). Class "
        "accuracy: the fraction of samples the judge classifies as the class they were drawn "
        "for (an expert alone is asked for the ensemble's classes, with its guidance; a text "
        "expert alone samples with the null caption and has none). The intervals are basic "
        "bootstrap intervals; FD's small-sample bias can put its point value above its "
        "interval. FD_judge own cluster: an expert against the real images of its own "
        "cluster.</p>",
    ]


def write_report(record: RunRecord, path: str | Path) -> Path:
    """Write the report of ``record`` to ``path`` (atomically); returns the path."""
    metrics = record.metrics
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>hetdiff run</title>"
             f"<style>{STYLE}</style></head><body>"]  # fmt: skip
    parts.append("<h1>hetdiff: heterogeneous decentralized diffusion run</h1>")
    parts.append(
        f"<p>Data <b>{html.escape(record.data)}</b> at {record.resolution} px, "
        f"K = {record.num_clusters} experts trained in isolation, one per cluster; a router mixes "
        "them in velocity space.</p>"
    )
    if record.missing_clusters:
        names = ", ".join(str(k) for k in record.missing_clusters)
        parts.append(
            f"<p class='missing'><b>Missing: the expert of cluster {names}</b> failed for good; "
            "the ensemble samples from the experts present, the router renormalized over "
            "them.</p>"
        )
    if record.text_encoder is not None:
        parts.append(
            f"<p>Conditioned on captions embedded by <b>{html.escape(record.text_encoder)}</b>: "
            "strategy grids use captions of the data, prompt grids the prompts below.</p>"
        )

    parts.append("<h2>Samples</h2><div class='grids'>")
    for name, grid in record.strategy_grids:
        parts.append(f"<figure>{_img(grid, alt=name)}"
                     f"<figcaption>ensemble, strategy <b>{html.escape(name)}</b></figcaption></figure>")  # fmt: skip
    parts.append("</div>")
    parts.extend(_prompt_figures(record))
    parts.append("<h3>Each expert alone (asked for the same classes)</h3><div class='grids'>")
    for expert in record.experts:
        label = f"expert {expert.cluster}: {expert.description}"
        parts.append(f"<figure>{_img(expert.grid, alt=label)}"
                     f"<figcaption>{html.escape(label)}</figcaption></figure>")  # fmt: skip
    parts.append("</div>")
    if record.verdict is not None:  # right below the grids it judges, above the class rows
        parts.append(
            f"<p class='verdict' id='verdict'>{html.escape(record.verdict, quote=False)}</p>"
        )
    parts.extend(_class_grids(record.class_grids))

    parts.append("<h2>Metrics</h2>")
    rows = [{"model": name, **vals} for name, vals in metrics.get("strategies", {}).items()]
    flops = metrics.get("flops_per_sample", {})
    for row in rows:
        row["GFLOPs/sample"] = flops.get(row["model"], float("nan")) / 1e9
    parts.append("<h3>Ensemble strategies</h3>")
    parts.append(_table(rows, ["model", "n", "fid", "intra_class_diversity", "GFLOPs/sample"]))
    parts.append("<p>FID: in-wheel InceptionV3, against real images of the data (small-sample "
                 "FID is biased upward: compare rows at equal n). Diversity: mean pairwise "
                 "distance of same-class samples in efficientnet-lite0 feature space (an offline "
                 "stand-in for LPIPS diversity).</p>")  # fmt: skip
    rows = [{"expert": name, **vals} for name, vals in metrics.get("experts", {}).items()]
    parts.append("<h3>Single experts</h3>")
    parts.append(_table(rows, ["expert", "cluster", "cluster_size", "n", "fid", "fid_own_cluster"]))
    parts.extend(_judge_table(record))
    parts.append("<h3>Router accuracy per noise level</h3>")
    parts.append(_table(metrics.get("router_by_t", []),
                        ["t_lo", "t_hi", "accuracy", "entropy", "prior_accuracy"]))  # fmt: skip

    parts.append("<h2>Training</h2><div class='grids'>")
    series = []
    for expert in record.experts:
        steps, losses = _loss_series(expert.log)
        series.append((f"{expert.cluster}: {expert.description}", steps, losses))
    parts.append(line_chart(series, "expert training loss", "step", "loss", log_y=True))
    steps, losses = _loss_series(record.router_log)
    parts.append(line_chart([("router", steps, losses)], "router cross-entropy", "step", "loss"))
    parts.extend(_router_weight_charts(record.router_weights))
    parts.append("</div>")

    parts.append("<h2>Clusters</h2>")
    partition = metrics.get("partition", {})
    parts.append(f"<p>Cluster sizes: {html.escape(str(partition.get('sizes', [])))} "
                 f"(features: {html.escape(str(partition.get('encoder')))}). "
                 "One row of training images per cluster:</p>")  # fmt: skip
    parts.append(_img(record.clusters_montage, css_class="", alt="cluster montage"))
    parts.append(
        "<h2>Config</h2><pre>" + html.escape(json.dumps(record.config, indent=2)) + "</pre>"
    )
    parts.append("</body></html>")
    path = Path(path)
    atomic_write_text(path, "\n".join(parts))
    return path
