"""The report is written from a RunRecord alone: every grid inlined, every number shown, text
escaped, missing files named, and the file written atomically."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import torch

from hetdiff.data.montage import save_grid
from hetdiff.report.html import write_report
from hetdiff.report.record import ExpertRecord, PromptRecord, RunRecord


def _grid(path: Path, value: float) -> Path:
    save_grid(torch.full((2, 1, 4, 4), value), str(path), nrow=2)
    return path


def _record(tmp_path: Path, **changes) -> RunRecord:
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)) + "\n")
    fields = dict(
        data="digits",
        resolution=8,
        num_clusters=2,
        text_encoder=None,
        strategy_grids=(("top1", _grid(tmp_path / "top1.png", 0.5)),),
        experts=(
            ExpertRecord(0, "ddpm eps cosine", _grid(tmp_path / "e0.png", -0.5), log),
            ExpertRecord(1, "flow velocity", tmp_path / "missing.png", log),
        ),
        router_log=log,
        clusters_montage=_grid(tmp_path / "clusters.png", 0.0),
        metrics={
            "strategies": {"top1": {"n": 8, "fid": 123.456, "intra_class_diversity": 0.25}},
            "flops_per_sample": {"top1": 2.5e9},
            "experts": {"expert-0": {"cluster": 0, "n": 8, "fid": 99.5}},
            "router_by_t": [
                {"t_lo": 0.0, "t_hi": 0.5, "accuracy": 0.75, "entropy": 0.1, "prior_accuracy": 0.5}
            ],  # fmt: skip
            "partition": {"sizes": [10, 12], "encoder": "pixels"},
        },
        config={"data": "digits", "note": "<script>"},
        router_weights={"t": [1.0, 0.5], "weights": [[[0.5, 0.5]], [[0.9, 0.1]]]},
    )
    fields.update(changes)
    return RunRecord(**fields)


def test_every_grid_and_number_of_the_record_is_in_the_report(tmp_path):
    record = _record(tmp_path)
    path = write_report(record, tmp_path / "out" / "report.html")
    page = path.read_text()
    inlined = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    expected = [record.strategy_grids[0][1], record.experts[0].grid, record.clusters_montage]
    assert [base64.b64decode(data) for data in inlined] == [p.read_bytes() for p in expected]
    assert "missing: missing.png" in page  # a grid that is not there is named, not dropped
    for text in ("123.5", "0.25", "2.5", "99.5", "0.75", "[10, 12]", "pixels",
                 "expert 0: ddpm eps cosine", "expert 1: flow velocity", "K = 2"):  # fmt: skip
        assert text in page, text
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert page.count("<svg") == 3  # expert losses, router loss, one router-weight chart
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["report.html"]  # no temp left


def test_prompt_grids_carry_their_escaped_prompts(tmp_path):
    prompts = (PromptRecord("a <b>bold</b> three", _grid(tmp_path / "p0.png", 1.0)),)
    record = _record(tmp_path, text_encoder="hash", prompts=prompts, prompt_strategy="top1")
    page = write_report(record, tmp_path / "report.html").read_text()
    assert "&ldquo;a &lt;b&gt;bold&lt;/b&gt; three&rdquo;" in page
    assert "captions embedded by <b>hash</b>" in page and "strategy <b>top1</b>" in page
    assert page.count("data:image/png;base64,") == 4


def test_a_record_without_prompts_or_router_weights_has_neither_section(tmp_path):
    page = write_report(_record(tmp_path, router_weights=None), tmp_path / "r.html").read_text()
    assert "Prompts (ensemble" not in page and "router weights" not in page


def _row(path: Path, n: int, value: float) -> Path:
    from hetdiff.data.montage import montage_rows

    montage_rows([torch.full((n, 1, 4, 4), value)], str(path))
    return path


def test_class_grids_put_each_class_name_beside_its_row(tmp_path):
    from hetdiff.report.record import ClassGrid, ClassGrids, ClassRow

    rows = (
        ClassRow(0, "digits/<zero>", 3, _row(tmp_path / "r0.png", 3, 0.5)),
        ClassRow(1, "digits/one", 0, None),
        ClassRow(2, "digits/two", 1, _row(tmp_path / "r2.png", 1, -0.5)),
    )
    grids = ClassGrids(per_class=8, num_classes=3, strategies=(ClassGrid("top1", 16, rows),))
    page = write_report(_record(tmp_path, class_grids=grids), tmp_path / "r.html").read_text()
    table = page[page.index("<table class='classrows'>") :]
    table = table[: table.index("</table>")]
    found = re.findall(
        r"<tr style='height:(\d+)px'><th scope='row' class='cls'>(.*?) <span class='count'>"
        r"\((\d+)\)</span></th><td(?: class='none')?>(.*?)</td></tr>",
        table,
    )
    assert [(name, int(count)) for _, name, count, _ in found] == [
        ("digits/&lt;zero&gt;", 3), ("digits/one", 0), ("digits/two", 1)
    ]  # fmt: skip
    # one row height for all (4 px images + 2 px padding twice = 8 px, drawn 5x: 40 px)
    assert {int(height) for height, *_ in found} == {40}
    cells = [cell for *_, cell in found]
    assert cells[1] == "none drawn"
    for cell, path, n in ((cells[0], rows[0].grid, 3), (cells[2], rows[2].grid, 1)):
        (data,) = re.findall(r'src="data:image/png;base64,([^"]+)"', cell)
        assert base64.b64decode(data) == path.read_bytes()
        assert f'width="{(2 + n * 6) * 5}"' in cell  # n cells of 4 + 2 px at scale 5
    assert "the first 8 of each strategy's 16 samples" in page and "Showing 3 of 3" in page


def test_judge_table_and_verdict_show_every_value_with_its_interval(tmp_path):
    metrics = {
        "strategies": {
            "top1": {"n": 64, "fd_judge": 12.34, "fd_judge_ci": [10.1, 14.2], "precision": 0.875,
                     "precision_ci": [0.8125, 0.9375], "class_accuracy": 0.8,
                     "class_accuracy_ci": [0.7, 0.9]},
        },
        "experts": {
            "expert-0": {"n": 64, "cluster": 0, "fd_judge": 18.4, "fd_judge_ci": [15.0, 21.1],
                         "recall": 0.25, "recall_ci": [0.2, 0.3], "fd_judge_own_cluster": 9.5,
                         "fd_judge_own_cluster_ci": [8.0, 11.0]},
        },
    }  # fmt: skip
    verdict = "verdict: the top-1 ensemble's FD_judge 12.3 [10.1, 14.2] beats <it>"
    page = write_report(
        _record(tmp_path, metrics=metrics, verdict=verdict), tmp_path / "r.html"
    ).read_text()
    assert "<p class='verdict' id='verdict'>verdict: the top-1 ensemble's FD_judge 12.3" in page
    assert "beats &lt;it&gt;" in page
    table = page[page.index("<table class='judged'>") :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr><td>(.*?)</td>(.*?)</tr>", table)
    assert [name for name, _ in rows] == ["ensemble, top1", "expert 0 alone"]
    ens, expert = (re.findall(r"<td>(.*?)</td>", "<td>" + cells) for _, cells in rows)
    interval = "<br><span class='ci'>[{}, {}]</span>"
    assert ens[1] == "12.3" + interval.format("10.1", "14.2")  # n, FD_judge, precision, ...
    assert ens[2] == "0.875" + interval.format("0.812", "0.938")
    assert ens[6] == "0.8" + interval.format("0.7", "0.9") and ens[7] == "&mdash;"
    assert expert[3] == "0.25" + interval.format("0.2", "0.3")
    assert expert[6] == "&mdash;"  # an expert alone has no class to hit
    assert expert[7] == "9.5" + interval.format("8", "11")


def test_a_run_without_judge_metrics_or_labels_has_no_judge_table_or_class_grids(tmp_path):
    page = write_report(_record(tmp_path), tmp_path / "r.html").read_text()
    for absent in ("<table class='judged'>", "Samples by class", "class='verdict'"):
        assert absent not in page
