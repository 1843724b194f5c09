"""hetdiff convert: bad conversions are one-line errors; a facebookresearch/DiT file imports
either way (adaLN-Zero exact, AdaLN-Single mapped) and converts on for flow fine-tuning."""

from __future__ import annotations

import torch

from dit_reference import reference_state_dict
from expert_files import CONFIG, write_ddpm_expert
from hetdiff.cli import main
from hetdiff.models.dit import DiTConfig


def one_line_cli_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hetdiff: error:") and "\n" not in err and match in err, err
    return err


def test_bad_conversions_are_one_line_errors(tmp_path, capsys):
    flow = write_ddpm_expert(tmp_path / "flow.safetensors", "flow", "velocity",
                             config=DiTConfig(**{**CONFIG.to_dict(), "learned_sigma": False}))  # fmt: skip
    out = str(tmp_path / "out")
    one_line_cli_error(capsys, ["convert", "--from", str(flow), "--to", "flow", "--out", out],
                       "is already a flow expert")  # fmt: skip
    ddpm = write_ddpm_expert(tmp_path / "ddpm.safetensors")
    assert main(["convert", "--from", str(ddpm), "--to", "flow", "--out", out]) == 0
    converted = str(tmp_path / "out" / "expert.safetensors")
    one_line_cli_error(capsys, ["convert", "--from", converted, "--to", "flow", "--out",
                                str(tmp_path / "again")], "already converted")  # fmt: skip
    torch.save({"w": torch.zeros(1)}, tmp_path / "dit.pt")
    one_line_cli_error(capsys, ["convert", "--from", str(tmp_path / "dit.pt"), "--to", "flow",
                                "--out", out], "--to expert first")  # fmt: skip
    one_line_cli_error(capsys, ["convert", "--from", str(tmp_path / "dit.pt"), "--to", "expert",
                                "--out", out], "not a facebookresearch/DiT state dict")  # fmt: skip


def test_convert_cli_imports_a_dit_file_either_way(tmp_path, capsys):
    from hetdiff.cli import main
    from hetdiff.experts.build import load_velocity_model
    from hetdiff.experts.store import read_spec

    torch.save(reference_state_dict(), tmp_path / "dit.pt")
    base = ["convert", "--from", str(tmp_path / "dit.pt"), "--to", "expert", "--num-heads", "2"]
    assert main([*base, "--out", str(tmp_path / "zero")]) == 0
    assert main([*base, "--out", str(tmp_path / "single"), "--modulation", "adaln-single"]) == 0
    zero = read_spec(tmp_path / "zero" / "expert.safetensors")
    single = read_spec(tmp_path / "single" / "expert.safetensors")
    assert zero.model["modulation"] == "adaln-zero" and zero.provenance["mapping"]["exact"]
    assert single.model["modulation"] == "adaln-single"
    assert single.provenance["mapping"]["approximate"] == [
        "blocks.1.scale_shift_table",
        "final_layer.scale_shift_table",
    ]
    velocity, _ = load_velocity_model(tmp_path / "single" / "expert.safetensors")
    assert velocity.t_range[1] < 1.0  # a DDPM (linear schedule) expert's range
    # the adaLN-Zero expert converts on for flow fine-tuning like any DDPM expert
    argv = ["convert", "--from", str(tmp_path / "zero" / "expert.safetensors"), "--to", "flow"]
    assert main([*argv, "--out", str(tmp_path / "flow")]) == 0
    assert main([*base, "--out", str(tmp_path / "bad"), "--model", "DiT-XL/2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "architecture mismatch" in err and "DiT-XL/2 has hidden_size 1152" in err
