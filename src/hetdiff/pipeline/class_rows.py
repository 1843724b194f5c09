"""The report's samples by class: for each strategy, one row per class holding the first
``per_class`` samples drawn for that class, and the listing the report reads them back from.

The sample stage draws every strategy's samples with labels of rows drawn from the data (its own
class frequencies, ``hetdiff.sampling.generate.draw_conditions``; the same labels for every
strategy), so the rows are the saved samples grouped by label, in sample order: no extra
sampling, and the sample files and metrics stay as they are. A class drawn fewer than
``per_class`` times gets a shorter row, one never drawn an empty one (the listing says so). At
most ``MAX_CLASS_ROWS`` classes are shown: all of them when the data has that few, else the first
``MAX_CLASS_ROWS`` (by class index) of those drawn.

Files, under the samples folder: ``classes/<strategy>-<label>.png`` (one row of images) and
``classes.json``::

    {"per_class": 8, "num_classes": 20, "max_rows": 32,
     "strategies": [{"strategy": "top1", "n": 128, "rows": [
         {"label": 0, "name": "mnist5k/0", "count": 7, "file": "classes/top1-0.png"}, ...]}]}

(strategies in the order they were sampled; ``file`` is null for a class with no samples).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hetdiff.data.montage import montage_rows
from hetdiff.io import atomic_write_json
from hetdiff.report.record import ClassGrid, ClassGrids, ClassRow
from hetdiff.sampling.files import SampleSet

MAX_CLASS_ROWS = 32  # rows a strategy's class grid shows at most (the report says how many)
LISTING = "classes.json"


def shown_classes(
    labels: torch.Tensor, num_classes: int, max_rows: int = MAX_CLASS_ROWS
) -> list[int]:
    """The classes that get a row: all ``num_classes`` when they are at most ``max_rows``, else
    the first ``max_rows`` class indices among ``labels`` (n,)."""
    if num_classes <= max_rows:
        return list(range(num_classes))
    return sorted({int(c) for c in labels.tolist() if c >= 0})[:max_rows]


def write_class_rows(
    samples_dir: str | Path,
    strategies: Mapping[str, SampleSet],
    class_names: Sequence[str],
    per_class: int,
) -> dict[str, Any] | None:
    """Write each labelled strategy's class rows and the listing (module docstring) into
    ``samples_dir``; returns the listing, or None (nothing written) when no strategy's samples
    carry labels. Images (n, C, H, W) are clamped to [-1, 1] as in every grid."""
    samples_dir = Path(samples_dir)
    listing: dict[str, Any] = {
        "per_class": per_class,
        "num_classes": len(class_names),
        "max_rows": MAX_CLASS_ROWS,
        "strategies": [],
    }
    for strategy, samples in strategies.items():
        if samples.labels is None:
            continue
        labels = samples.labels
        rows = []
        for label in shown_classes(labels, len(class_names)):
            (indices,) = torch.nonzero(labels == label, as_tuple=True)
            entry = {"label": label, "name": class_names[label], "count": len(indices),
                     "file": None}  # fmt: skip
            if len(indices):
                name = f"classes/{strategy}-{label}.png"
                images = samples.images[indices[:per_class]].clamp(-1, 1)
                montage_rows([images], str(samples_dir / name))
                entry["file"] = name
            rows.append(entry)
        listing["strategies"].append({"strategy": strategy, "n": len(labels), "rows": rows})
    if not listing["strategies"]:
        return None
    atomic_write_json(samples_dir / LISTING, listing)
    return listing


def read_class_rows(samples_dir: str | Path) -> ClassGrids | None:
    """The class grids a run's sample stage listed (``write_class_rows``), as the report's
    record; None when the run wrote none (unlabelled samples, or a run from before them)."""
    samples_dir = Path(samples_dir)
    path = samples_dir / LISTING
    if not path.is_file():
        return None
    listing = json.loads(path.read_text())
    grids = []
    for entry in listing["strategies"]:
        rows = tuple(
            ClassRow(
                label=int(row["label"]),
                name=str(row["name"]),
                count=int(row["count"]),
                grid=None if row["file"] is None else samples_dir / row["file"],
            )
            for row in entry["rows"]
        )
        grids.append(ClassGrid(strategy=str(entry["strategy"]), n=int(entry["n"]), rows=rows))
    return ClassGrids(
        per_class=int(listing["per_class"]),
        num_classes=int(listing["num_classes"]),
        strategies=tuple(grids),
    )
