"""``hetdiff run --launcher ray`` on a real two-node Ray cluster the fixture starts: each expert
runs on the node that offers its custom resource and equals the local launcher's bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys

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
