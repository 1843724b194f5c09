"""The run report: one self-contained ``report.html`` (images inlined as data URIs), written from
a ``RunRecord`` (``hetdiff.report.record``)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from hetdiff.io import atomic_write_text
from hetdiff.report.record import RunRecord
from hetdiff.report.svg import line_chart

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right} th{background:#f4f4f4} pre{background:#f7f7f7;padding:.8em;overflow:auto;
font-size:.8em;max-height:22em} .grids{display:flex;flex-wrap:wrap;gap:1em}
.grids figure{margin:0} figcaption{text-align:center;font-size:.9em}
img.pix{image-rendering:pixelated;width:300px}
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
    parts.append("<h3>Each expert alone (unconditional)</h3><div class='grids'>")
    for expert in record.experts:
        label = f"expert {expert.cluster}: {expert.description}"
        parts.append(f"<figure>{_img(expert.grid, alt=label)}"
                     f"<figcaption>{html.escape(label)}</figcaption></figure>")  # fmt: skip
    parts.append("</div>")

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
