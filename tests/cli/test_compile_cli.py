"""hetdiff train-expert --compile: the compiled network and fused AdamW train through the real
entry point, the first step's loss equals the eager run's to float rounding, a run resumes with
the flag toggled either way, and the checkpoint holds a plain DiT's keys."""

from __future__ import annotations

import json
import math

import pytest
from torch._dynamo.utils import counters

from hetdiff.cli import main
from hetdiff.experts.store import load_expert_model, load_expert_state
from hetdiff.models.dit import DiT


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow  # torch.compile of a tiny DiT, forward and backward: about 30-60 s at 1 thread
def test_compiled_training_matches_eager_and_saves_a_plain_checkpoint(tmp_path, capsys):
    base = ["train-expert", "--data", "digits", "--resolution", "8", "--batch-size", "16",
            "--seed", "3", "--mixed-precision", "no", "--no-progress"]  # fmt: skip
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    graphs = counters["stats"]["unique_graphs"]  # graphs torch.compile built in this process
    assert main([*base, "--steps", "1", "--out", str(eager)]) == 0
    assert counters["stats"]["unique_graphs"] == graphs  # the default compiles nothing
    assert main([*base, "--steps", "1", "--compile", "--out", str(compiled)]) == 0
    assert counters["stats"]["unique_graphs"] > graphs
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")]  # fmt: skip
    assert [p["settings"]["compile"] for p in printed] == [False, True]
    assert _losses(compiled)[0] == pytest.approx(_losses(eager)[0], rel=1e-4)

    # toggled on resume, both ways: the eager state continues compiled, the compiled one eager
    assert main([*base, "--steps", "3", "--compile", "--resume", "--out", str(eager)]) == 0
    assert main([*base, "--steps", "2", "--resume", "--out", str(compiled)]) == 0
    for out, steps in [(eager, 3), (compiled, 2)]:
        losses = _losses(out)
        assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
        state, spec = load_expert_state(out / "expert.safetensors")
        plain, _ = load_expert_model(out / "expert.safetensors")  # a plain DiT, loaded strictly
        assert spec.steps == steps and type(plain) is DiT
        assert sorted(state) == sorted(plain.state_dict())  # no "_orig_mod." prefix
