"""The experts stage's job files: a run rooted at a URL gives each expert job the store folder
of its training state; a local run's job names none (and its JSON is unchanged)."""

from __future__ import annotations

import json

from cluster_runs import toy_config
from hetdiff.config import load_config
from hetdiff.pipeline.expert_jobs import write_expert_job
from hetdiff.pipeline.layout import RunLayout
from hetdiff.training.jobs import ExpertJob


def test_a_url_run_gives_each_job_its_state_url_and_a_local_run_none(tmp_path):
    config = load_config(toy_config(tmp_path))
    layout = RunLayout(tmp_path / "run")
    assert write_expert_job(config, layout, 1) is False
    job_path = layout.expert(1) / "job.json"
    local = json.loads(job_path.read_text())
    assert "state_url" not in local and ExpertJob.read(job_path).state_url is None
    write_expert_job(config, layout, 1, store_url="s3://bucket/run")
    job = ExpertJob.read(job_path)
    assert job.state_url == "s3://bucket/run/experts/expert-1/train_state"
    values = json.loads(job_path.read_text())
    assert {k: v for k, v in values.items() if k != "state_url"} == local  # nothing else moves
    assert ExpertJob.from_json(job.to_json()) == job
