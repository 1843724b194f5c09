"""hetdiff train-expert: --init fine-tunes a converted expert from the command line; refusals
(unconverted DDPM, wrong architecture, resolution or objective, a second run over training state)
are one-line errors."""

from __future__ import annotations

import json

import safetensors.torch
import torch

from expert_files import write_ddpm_expert
from hetdiff.cli import main
from hetdiff.experts.build import is_converted
from hetdiff.experts.convert import convert_to_flow
from hetdiff.experts.store import read_spec


def one_line_cli_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hetdiff: error:") and "\n" not in err and match in err, err
    return err


def test_train_expert_init_refusals_are_one_line_errors(tmp_path, capsys):
    ddpm = write_ddpm_expert(tmp_path / "ddpm.safetensors")
    base = ["train-expert", "--data", "digits", "--resolution", "8", "--steps", "2",
            "--no-progress", "--out", str(tmp_path / "ft")]  # fmt: skip
    one_line_cli_error(capsys, [*base, "--init", str(ddpm)], "convert it first")
    converted = str(convert_to_flow(ddpm, tmp_path / "c"))
    one_line_cli_error(capsys, [*base, "--init", converted, "--model", "small"],
                       "architecture mismatch")  # fmt: skip
    wrong = ["train-expert", "--data", "digits", "--resolution", "16", "--steps", "2",
             "--no-progress", "--out", str(tmp_path / "ft2"), "--init", converted]  # fmt: skip
    one_line_cli_error(capsys, wrong, "was trained at 8 px")
    one_line_cli_error(capsys, [*base, "--init", converted, "--objective", "ddpm"],
                       "drop --objective ddpm")  # fmt: skip


def test_train_expert_init_runs_from_the_cli(tmp_path, capsys):
    ddpm = write_ddpm_expert(tmp_path / "ddpm.safetensors")
    converted = str(convert_to_flow(ddpm, tmp_path / "c"))
    argv = ["train-expert", "--data", "digits", "--resolution", "8", "--steps", "3",
            "--batch-size", "16", "--no-progress", "--mixed-precision", "no",
            "--out", str(tmp_path / "ft"), "--init", converted]  # fmt: skip
    assert main(argv) == 0
    spec = read_spec(tmp_path / "ft" / "expert.safetensors")
    assert is_converted(spec) and spec.steps == 3
    one_line_cli_error(capsys, argv, "already holds training state")  # no silent restart


def test_min_snr_gamma_reaches_the_ddpm_loss(tmp_path, capsys):
    """--min-snr-gamma weights the loss the expert trains on: gamma above every SNR of the
    schedule leaves the eps loss and the trained weights bitwise as without the flag, a small
    gamma lowers the first step's loss (eps weights min(1, gamma / SNR) <= 1) and changes the
    weights; a flow expert refuses the flag in one line and writes nothing."""
    base = ["train-expert", "--data", "digits", "--resolution", "8", "--steps", "1",
            "--batch-size", "16", "--objective", "ddpm", "--prediction", "eps", "--seed", "3",
            "--mixed-precision", "no", "--no-progress"]  # fmt: skip
    runs = {}
    for name, extra in [("plain", []), ("huge", ["--min-snr-gamma", "1e30"]),
                        ("small", ["--min-snr-gamma", "0.5"])]:  # fmt: skip
        out = tmp_path / name
        assert main([*base, *extra, "--out", str(out)]) == 0
        printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                   if line.startswith("{")]  # fmt: skip
        loss = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
        weights = safetensors.torch.load_file(str(out / "expert.safetensors"))
        runs[name] = (printed[0]["settings"]["min_snr_gamma"], loss, weights)
    assert [runs[n][0] for n in ("plain", "huge", "small")] == [None, 1e30, 0.5]
    assert runs["huge"][1] == runs["plain"][1]
    assert all(torch.equal(runs["huge"][2][k], v) for k, v in runs["plain"][2].items())
    assert runs["small"][1][0] < runs["plain"][1][0]
    assert any(not torch.equal(runs["small"][2][k], v) for k, v in runs["plain"][2].items())
    flow = [
        "train-expert",
        "--data",
        "digits",
        "--resolution",
        "8",
        "--steps",
        "1",
        "--objective",
        "flow",
        "--min-snr-gamma",
        "5",
        "--out",
        str(tmp_path / "flow"),
    ]
    one_line_cli_error(capsys, flow, "min_snr_gamma weights the DDPM loss")
    assert not (tmp_path / "flow").exists()
