"""hetdiff train-expert: --init fine-tunes a converted expert from the command line; refusals
(unconverted DDPM, wrong architecture, resolution or objective, a second run over training state)
are one-line errors."""

from __future__ import annotations

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
