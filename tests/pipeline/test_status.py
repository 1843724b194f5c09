"""``hetdiff status`` of a run rooted at a store URL reads each expert's progress from the
training state its job mirrors to the store (``training.state_mirror``), so a machine that never
ran the experts still sees how far each one is."""

from __future__ import annotations

import json
import uuid

from hetdiff.config import RunConfig
from hetdiff.experts.artifact_store import ArtifactStore
from hetdiff.pipeline.status import expert_states


def test_status_of_a_url_run_shows_the_steps_its_islands_mirrored(tmp_path, monkeypatch):
    monkeypatch.setenv("HETDIFF_CACHE_DIR", str(tmp_path / "cache"))  # this machine's work folder
    url = f"memory://status-{uuid.uuid4().hex}/run"
    store = ArtifactStore(url)
    store.put_bytes("config.json", json.dumps(RunConfig().to_dict()).encode())
    manifest = {"step": 700, "directory": "step-00000700", "files": {}}
    store.put_bytes("experts/expert-1/train_state/latest.json", json.dumps(manifest).encode())
    store.put_bytes("experts/expert-3/train_state/latest.json", b"not json")  # half-readable
    entries = expert_states(url)
    assert [(e["expert"], e["step"], e["steps"]) for e in entries] == [
        (0, None, 1000), (1, 700, 1000), (2, None, 1000), (3, None, 1000)]  # fmt: skip
    assert all(e["state"] == "NOT SUBMITTED" for e in entries)
    # nothing of the state was copied into this machine's work folder
    assert not list((tmp_path / "cache").rglob("train_state"))
