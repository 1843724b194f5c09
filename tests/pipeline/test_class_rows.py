"""The class rows of a run's samples: each strategy's saved samples grouped by the label they
were drawn for, written as one PNG row per class with a listing that reads back as the record."""

import json

import numpy as np
import torch
from PIL import Image

from hetdiff.pipeline.class_rows import read_class_rows, shown_classes, write_class_rows
from hetdiff.sampling.files import SampleSet

NAMES = ("digits/zero", "digits/one", "digits/two", "digits/three")


def _samples(labels: list[int]) -> SampleSet:
    # image i is filled with a value that encodes i, so a row's images can be told apart
    n = len(labels)
    values = torch.linspace(-1, 1, n)
    images = values[:, None, None, None].expand(n, 1, 4, 4).clone()
    return SampleSet(images * 1.5, torch.tensor(labels))  # unclamped, as samples are saved


def test_rows_hold_the_first_per_class_samples_of_each_class_in_sample_order(tmp_path):
    labels = [2, 0, 2, 2, 0, 2, 3]  # class 1 never drawn
    samples = _samples(labels)
    listing = write_class_rows(tmp_path, {"full": samples, "top1": samples}, NAMES, per_class=3)
    assert [s["strategy"] for s in listing["strategies"]] == ["full", "top1"]  # sampling order
    rows = listing["strategies"][0]["rows"]
    assert [(r["label"], r["name"], r["count"]) for r in rows] == [
        (0, "digits/zero", 2), (1, "digits/one", 0), (2, "digits/two", 4), (3, "digits/three", 1)
    ]  # fmt: skip
    assert rows[1]["file"] is None and not (tmp_path / "classes" / "full-1.png").exists()
    # class 2: samples 0, 2, 3 (the first 3 of 4), clamped to [-1, 1] as in every grid
    row = np.asarray(Image.open(tmp_path / rows[2]["file"]))
    assert row.shape == (8, 2 + 3 * 6)  # one row of 3 cells of 4 px, 2 px padding
    expected = ((samples.images[[0, 2, 3], 0, 0, 0].clamp(-1, 1) + 1) * 127.5).round()
    assert [int(row[2, 2 + 6 * j]) for j in range(3)] == expected.int().tolist()
    assert json.loads((tmp_path / "classes.json").read_text()) == listing
    grids = read_class_rows(tmp_path)
    assert (grids.per_class, grids.num_classes) == (3, 4)
    assert [g.strategy for g in grids.strategies] == ["full", "top1"]
    top1 = grids.strategies[1]
    assert top1.n == 7 and [r.count for r in top1.rows] == [2, 0, 4, 1]
    assert top1.rows[1].grid is None and top1.rows[3].grid == tmp_path / "classes/top1-3.png"


def test_unlabelled_samples_write_nothing_and_many_classes_are_bounded(tmp_path):
    unlabelled = SampleSet(torch.zeros(4, 1, 4, 4))
    assert write_class_rows(tmp_path, {"top1": unlabelled}, NAMES, per_class=8) is None
    assert list(tmp_path.iterdir()) == [] and read_class_rows(tmp_path) is None
    labels = torch.tensor([40, 3, 3, 7, 39, 1, -1])
    assert shown_classes(labels, 4) == [0, 1, 2, 3]  # few classes: all, drawn or not
    assert shown_classes(labels, 50, max_rows=3) == [1, 3, 7]  # many: the first ones drawn
