"""``hetdiff.launch.base``: an attempt's first log line says what it does, including that a job
mirrored to a store may resume from the store's committed state although its folder has none."""

from __future__ import annotations

from hetdiff.launch.base import ATTEMPT_LINE, attempt_line
from hetdiff.training.jobs import ExpertJob


def test_the_attempt_line_names_resume_start_and_the_store(tmp_path) -> None:
    plain, mirrored = tmp_path / "plain.json", tmp_path / "mirrored.json"
    plain.write_text(ExpertJob(data="digits", out=str(tmp_path / "a")).to_json())
    job = ExpertJob(data="digits", out=str(tmp_path / "b"), state_url="memory://run/state")
    mirrored.write_text(job.to_json())
    assert attempt_line(plain, True) == f"{ATTEMPT_LINE} resuming from its last checkpoint"
    assert attempt_line(plain, False) == f"{ATTEMPT_LINE} starting"
    line = attempt_line(mirrored, False)
    assert line.startswith(f"{ATTEMPT_LINE} starting, unless its store holds a committed")
    assert attempt_line(mirrored, True).endswith("resuming from its last checkpoint")
