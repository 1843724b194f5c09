"""``hetdiff run`` in-process: a bad config is refused in one line before any stage runs, and
``--quick`` runs ``hetdiff.config.QUICK`` through ``hetdiff.pipeline.run_pipeline``."""

from __future__ import annotations

import pytest

import hetdiff.pipeline.command
from hetdiff.cli import main
from hetdiff.config import load_config


@pytest.fixture
def no_stage_runs(monkeypatch):
    """Any call into the pipeline's stages fails the test."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a stage ran although the config is bad")

    monkeypatch.setattr(hetdiff.pipeline.command.Run, "execute", refuse)


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster]\nk = 3\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hetdiff: error: cluster.k = 3 but 4 experts") and "\n" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[sample]\nstrategies = ['top-1', 'ful']\n",
            "unknown strategy 'top-1' in sample.strategies; did you mean 'top1'?",
        ),
        (
            "[sample]\nstrategies = ['full', 'ful']\n",
            "unknown strategy 'ful' in sample.strategies; did you mean 'full'?",
        ),
        ("[sample]\nsolver = 'rk4'\n", "sample.solver 'rk4' is unknown; use one of euler, heun"),
    ],
)
def test_bad_strategy_or_solver_exits_2_before_any_stage(
    tmp_path, capsys, no_stage_runs, text, message
):
    config = tmp_path / "run.toml"
    config.write_text(text)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"hetdiff: error: {message}\n"  # one line, naming the key
    assert not (out / "partition.json").exists() and not (out / "stages").exists()
    assert not out.exists()


def test_quick_runs_the_config_quick_preset_and_prints_one_line_per_strategy(
    tmp_path, capsys, monkeypatch
):
    seen = {}

    class FakeRun:
        def __init__(self, config, out, **options):
            seen["config"], seen["out"], seen["options"] = config, out, options

        def execute(self):
            return {"strategies": {"top1": {"fid": 41.23456, "n": 16}, "full": {"fid": 39.0}}}

    monkeypatch.setattr(hetdiff.pipeline.command, "Run", FakeRun)
    config = tmp_path / "run.toml"
    config.write_text('data = "digits"\n[cluster]\nk = 3\n')
    out = str(tmp_path / "q")
    assert main(["run", str(config), "--quick", "--out", out]) == 0
    assert seen["config"] == load_config(config, preset="quick") and seen["out"] == out
    assert seen["config"].data == "digits" and seen["config"].cluster.k == 2
    assert seen["options"] == {"launcher": "local", "allow_missing": False}
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["    top1: fid=41.23", "    full: fid=39", f"report: {out}/report.html"]
