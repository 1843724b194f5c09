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
