"""``hetdiff run --out s3://...`` against a real S3-compatible server (moto in server mode, started
by the test): every artifact lands under the URL (atomically, no temporary or local-only keys), a
rerun from an empty work folder skips every stage from what the store holds, and a checkpoint
whose bytes changed in the store is refused on read."""

from __future__ import annotations

import json
import re

import pytest

from cluster_runs import finish, free_port, hetdiff, toy_config
from hetdiff.experts.store import read_spec
from s3_server import BUCKET, moto_server

pytestmark = pytest.mark.daemons

URL = f"s3://{BUCKET}/run"


@pytest.fixture(scope="module")
def s3():
    with moto_server() as server:
        yield server


def test_a_run_rooted_in_s3_lands_there_and_a_rerun_anywhere_skips_it(s3, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3["options"])
    config = str(toy_config(tmp_path, steps1=24))

    def env(cache: str) -> dict:
        return {**s3["env"], "HETDIFF_CACHE_DIR": str(tmp_path / cache)}

    log = finish(hetdiff("run", config, "--out", URL, env=env("machine-a")))
    assert "pushed" in log and "submitted to the local launcher" in log
    keys = sorted(path.split("/", 2)[2] for path in fs.find(f"{BUCKET}/run"))
    for key in ("config.json", "partition.json", "metrics.json", "report.html",
                "router/router.safetensors", "samples/top1.png", "samples/top1.safetensors",
                *(f"stages/{s}.json" for s in ("cluster", "experts", "router", "sample",
                                               "evaluate", "report")),
                *(f"experts/expert-{k}/{name}" for k in (0, 1)
                  for name in ("expert.safetensors", "log.jsonl", "stdout.log"))):  # fmt: skip
        assert key in keys, (key, keys)
    assert not [k for k in keys if k.endswith(".tmp") or "/." in k or "/slurm/" in k]
    # each job's last committed training state (the jobs mirror it): its manifest and its files
    for folder in ("experts/expert-0", "experts/expert-1", "router"):
        prefix = f"{folder}/train_state"
        manifest = json.loads(fs.cat_file(f"{BUCKET}/run/{prefix}/latest.json"))
        named = [f"{prefix}/{manifest['directory']}/{name}" for name in manifest["files"]]
        assert manifest["step"] == (10 if folder == "router" else 24), manifest
        assert [k for k in keys if k.startswith(f"{prefix}/")] == sorted(
            [f"{prefix}/latest.json", *named]
        ), keys
    work = next((tmp_path / "machine-a" / "runs").iterdir())
    for k in (0, 1):
        key = f"experts/expert-{k}/expert.safetensors"
        stored = fs.cat_file(f"{BUCKET}/run/{key}")
        assert stored == (work / key).read_bytes()
        assert read_spec(work / key).cluster_id == k

    # another machine (an empty work folder): everything is in the store, nothing reruns
    log = finish(hetdiff("run", config, "--out", URL, env=env("machine-b")))
    assert log.count("done before, skipped") == 6 and "submitted" not in log
    assert "pulled" in log and "pushed" not in log
    status = finish(hetdiff("status", URL, env=env("machine-c"))).splitlines()
    assert len(status) == 2 and all("COMPLETED" in line for line in status), status
    # machine-c never trained: the steps come from the states the jobs mirrored to the store
    assert all("step 24/24" in line for line in status), status

    # one bit of expert 1 flips in the store: refused on read, nothing written in its place
    key = f"{BUCKET}/run/experts/expert-1/expert.safetensors"
    data = bytearray(fs.cat_file(key))
    data[-10] ^= 0x01
    fs.pipe_file(key, bytes(data))
    proc = hetdiff("run", config, "--out", URL, env=env("machine-d"))
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, log
    assert (
        f"hetdiff: error: checkpoint {URL}/experts/expert-1/expert.safetensors does not "
        "verify" in log
    ), log
    assert not list((tmp_path / "machine-d").rglob("expert-1/expert.safetensors"))
    assert json.loads(fs.cat_file(f"{BUCKET}/run/stages/report.json"))["key"]


def test_an_island_launches_its_own_expert_into_s3_and_the_run_keeps_it(s3, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3["options"])
    url, config = f"s3://{BUCKET}/islands", str(toy_config(tmp_path, steps1=24))
    island = {**s3["env"], "HETDIFF_CACHE_DIR": str(tmp_path / "island-b")}
    log = finish(hetdiff("launch-expert", url, "--expert", "1", "--config", config, env=island))
    assert f"expert 1: {url}/experts/expert-1/expert.safetensors" in log
    # "expert 0" as a word: the log's timestamps ("launch-expert 00:35:41") hold the substring
    assert "stage cluster: start" in log and not re.search(r"\bexpert 0\b", log)
    trained = fs.cat_file(f"{BUCKET}/islands/experts/expert-1/expert.safetensors")
    assert not fs.exists(f"{BUCKET}/islands/experts/expert-0/expert.safetensors")

    coordinator = {**s3["env"], "HETDIFF_CACHE_DIR": str(tmp_path / "coordinator")}
    log = finish(hetdiff("run", config, "--out", url, env=coordinator))
    assert "stage cluster: done before, skipped" in log
    assert "expert 1: finished before, kept" in log and "expert 0: flow" not in log
    assert log.count("submitted to the local launcher") == 1
    assert fs.cat_file(f"{BUCKET}/islands/experts/expert-1/expert.safetensors") == trained
    assert fs.exists(f"{BUCKET}/islands/experts/expert-0/expert.safetensors")
    assert fs.exists(f"{BUCKET}/islands/report.html")


def test_an_unreachable_store_is_one_line_naming_it(tmp_path):
    pytest.importorskip("s3fs", reason="`make test-daemons-install` installs s3fs")
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "1",
        "HETDIFF_CACHE_DIR": str(tmp_path / "cache"),
    }  # fmt: skip
    url = f"s3://{BUCKET}/nowhere"
    proc = hetdiff("run", str(toy_config(tmp_path)), "--out", url, env=env)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, log
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"hetdiff: error: cannot read {url}: "), log
    assert last.endswith("check the URL, the credentials (e.g. AWS_* variables) and the network")
    assert "Traceback" not in log and not (tmp_path / "cache" / "runs").exists()
