"""``hetdiff run --launcher ray`` on a real two-node Ray cluster the fixture starts: each expert
runs on the node that offers its custom resource and equals the local launcher's bit for bit; an
expert's detached actor outlives a killed driver and a rerun follows it instead of resubmitting."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cluster_runs import finish, hetdiff, toy_config

pytestmark = pytest.mark.daemons

ISLANDS = """
[[resources]]
ray_resources = ["island-a"]
[[resources]]
ray_resources = ["island-b"]
"""


def node_of_resource(address: str) -> dict[str, str]:
    """{custom resource: the id of the node that offers it}, asked in a separate driver."""
    probe = (
        "import json, ray, sys; ray.init(address=sys.argv[1], logging_level='error'); "
        "print(json.dumps({r: n['NodeID'] for n in ray.nodes() if n['Alive'] "
        "for r in n['Resources'] if r.startswith('island-')}))"
    )
    out = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ray_run_pins_each_expert_to_its_island_and_equals_the_local_run(
    ray_cluster, local_run, tmp_path
):
    out = tmp_path / "run"
    config = toy_config(tmp_path, extra=ISLANDS)
    log = finish(hetdiff("run", str(config), "--launcher", "ray", "--out", str(out)))
    assert "submitted to the ray launcher" in log
    nodes = node_of_resource(ray_cluster)
    assert len(set(nodes.values())) == 2  # two nodes, one island each
    for k, island in enumerate(("island-a", "island-b")):
        folder = out / "experts" / f"expert-{k}"
        record = json.loads((folder / "launch.json").read_text())
        assert record["launcher"] == "ray" and record["state"] == "COMPLETED"
        assert record["node"] == nodes[island], (k, record, nodes)
        ours = (folder / "expert.safetensors").read_bytes()
        assert ours == (local_run / "experts" / f"expert-{k}" / "expert.safetensors").read_bytes()


def test_a_ray_expert_asking_for_a_resource_no_node_offers_is_refused(ray_cluster, tmp_path):
    extra = (
        '[[resources]]\nray_resources = ["island-a"]\n[[resources]]\nray_resources = ["gpu-x"]\n'
    )
    proc = hetdiff("run", str(toy_config(tmp_path, extra=extra)), "--launcher", "ray",
                   "--out", str(tmp_path / "run"))  # fmt: skip
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, log
    assert "hetdiff: error: expert-1 asks for Ray resources ['gpu-x'] that no node offers" in log


def test_a_ray_expert_outlives_its_driver_and_a_rerun_follows_it(ray_cluster, local_run, tmp_path):
    out, config = tmp_path / "run", str(toy_config(tmp_path, extra=ISLANDS))
    first = hetdiff("run", config, "--launcher", "ray", "--out", str(out))
    folder = out / "experts" / "expert-1"
    deadline = time.time() + 300
    while not (folder / "train_state" / "latest.json").exists():  # mid-training
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    first.kill()  # the driver dies; the detached actor trains on
    first.wait()
    job_id = json.loads((folder / "launch.json").read_text())["job_id"]
    step = json.loads((folder / "train_state" / "latest.json").read_text())["step"]
    while json.loads((folder / "train_state" / "latest.json").read_text())["step"] == step:
        assert time.time() < deadline, "the actor stopped training with its driver"
        time.sleep(0.2)  # it commits later steps with no driver alive
    log = finish(hetdiff("run", config, "--launcher", "ray", "--out", str(out)))
    assert "expert 1: its ray job is queued or running, following it" in log
    record = json.loads((folder / "launch.json").read_text())
    assert record["job_id"] == job_id and record["state"] == "COMPLETED"
    assert (folder / "stdout.log").read_text().count("hetdiff launch: attempt") == 1
    for k in (0, 1):
        name = f"experts/expert-{k}/expert.safetensors"
        assert (out / name).read_bytes() == (local_run / name).read_bytes()
