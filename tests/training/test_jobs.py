"""ExpertJob: serialized settings that round-trip through JSON and refuse bad values in one
line; ``python -m hetdiff.training.jobs`` trains a job and reports a bad one as
``hetdiff: error: ...`` with exit status 2, as the command line does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hetdiff.config import ExpertSettings
from hetdiff.errors import HetdiffError
from hetdiff.experts.store import read_spec
from hetdiff.training.jobs import ExpertJob, main, run_expert_job


def full_job(tmp_path) -> ExpertJob:
    return ExpertJob(
        data="digits",
        out=str(tmp_path / "expert"),
        settings=ExpertSettings(
            objective="ddpm",
            prediction="v",
            schedule="cosine",
            steps=7,
            learned_variance=True,
            seed=3,
            progress=False,
        ),  # fmt: skip
        resolution=8,
        partition=str(tmp_path / "partition.json"),
        cluster=1,
        resume=True,
        autoencoder="vae",
        cache_dir=str(tmp_path / "cache"),
    )


def test_job_round_trips_through_json(tmp_path):
    job = full_job(tmp_path)
    text = job.to_json()
    again = ExpertJob.from_json(text)
    assert again == job and again.settings == job.settings
    values = json.loads(text)
    assert values["settings"]["schedule"] == "cosine" and values["cluster"] == 1
    # the defaults, and resolved settings (prediction / schedule filled in) survive as well
    plain = ExpertJob(data="digits", out="out", settings=ExpertSettings(objective="ddpm"))
    assert ExpertJob.from_json(plain.to_json()) == plain
    assert json.loads(plain.to_json())["settings"]["prediction"] == "eps"
    init = ExpertJob(data="digits", out="out", init="ckpt.safetensors", init_model="tiny")
    assert ExpertJob.from_json(init.to_json()) == init


@pytest.mark.parametrize(
    "change, message",
    [
        ({"cluster": None}, "--partition and --cluster go together"),
        ({"colour": 1}, "unknown expert job keys ['colour']"),
        ({"resolution": "8"}, "ExpertJob.resolution must be an integer or null"),
        ({"settings": {"objective": "flow", "schedule": "cosine"}}, "schedule is for ddpm"),
        ({"settings": {"stepz": 3}}, "did you mean 'steps'?"),
    ],
)
def test_bad_jobs_are_one_line_errors(tmp_path, change, message):
    values = {**json.loads(full_job(tmp_path).to_json()), **change}
    with pytest.raises(HetdiffError) as info:
        ExpertJob.from_json(json.dumps(values))
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(HetdiffError, match="not valid JSON"):
        ExpertJob.from_json("{")
    with pytest.raises(HetdiffError, match=r"missing required keys \['out'\]"):
        ExpertJob.from_json('{"data": "digits"}')


def test_run_expert_job_trains_the_expert_it_describes(tmp_path, capsys):
    settings = ExpertSettings(objective="ddpm", schedule="cosine", steps=2, batch_size=8,
                              checkpoint_every=2, progress=False, mixed_precision="no")  # fmt: skip
    job = ExpertJob(data="digits", out=str(tmp_path / "e"), settings=settings, resolution=8)
    path = run_expert_job(job)
    assert path == tmp_path / "e" / "expert.safetensors"
    spec = read_spec(path)
    assert (spec.objective, spec.prediction, spec.schedule["name"], spec.steps) == (
        "ddpm", "eps", "cosine", 2)  # fmt: skip
    assert "training ddpm expert (eps) on 1797 images of digits at 8px" in capsys.readouterr().out
    # the module entry point runs a job file the same way (here: refusing to restart it)
    job_file = tmp_path / "job.json"
    job_file.write_text(job.to_json())
    assert main([str(job_file)]) == 2
    assert "already holds training state" in capsys.readouterr().err


def test_module_entry_point_reports_a_bad_job_in_one_line(tmp_path):
    job_file = tmp_path / "job.json"
    values = json.loads(ExpertJob(data="digits", out=str(tmp_path / "e")).to_json())
    values["settings"]["objective"] = "score"
    job_file.write_text(json.dumps(values))
    result = subprocess.run(
        [sys.executable, "-m", "hetdiff.training.jobs", str(job_file)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert err.startswith("hetdiff: error:") and "\n" not in err, err
    assert "objective 'score' is unknown" in err and str(job_file) in err
    missing = subprocess.run(
        [sys.executable, "-m", "hetdiff.training.jobs", str(tmp_path / "nope.json")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and "nope.json does not exist" in missing.stderr
