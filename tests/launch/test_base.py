"""``hetdiff.launch.base``: an attempt's first log line says what it does, including that a job
mirrored to a store may resume from the store's committed state although its folder has none."""

from __future__ import annotations

import dataclasses

from hetdiff.launch.base import ATTEMPT_LINE, attempt_line, prepare_attempt
from hetdiff.training.jobs import ExpertJob


def test_the_attempt_line_names_resume_start_and_the_store(tmp_path) -> None:
    plain = ExpertJob(data="digits", out=str(tmp_path / "a"))
    mirrored = ExpertJob(data="digits", out=str(tmp_path / "b"), state_url="memory://run/state")
    resumed = dataclasses.replace(plain, resume=True)
    assert attempt_line(resumed) == f"{ATTEMPT_LINE} resuming from its last checkpoint"
    assert attempt_line(plain) == f"{ATTEMPT_LINE} starting"
    line = attempt_line(mirrored)
    assert line.startswith(f"{ATTEMPT_LINE} starting, unless its store holds a committed")
    assert attempt_line(dataclasses.replace(mirrored, resume=True)).endswith(
        "resuming from its last checkpoint"
    )


def test_prepare_attempt_sets_resume_from_the_folder_and_returns_the_written_job(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(ExpertJob(data="digits", out=str(tmp_path / "out"), resume=True).to_json())
    job = prepare_attempt(path)  # nothing committed in out/: the attempt starts over
    assert job.resume is False and ExpertJob.read(path) == job
