"""Real engines, started by the tests: a one-node Slurm cluster (munged, slurmctld, slurmd from
Debian's slurm-wlm and munge) and a two-node Ray cluster on localhost; and one toy run trained
by the local launcher that the others must reproduce bit for bit.

These tests carry the ``daemons`` marker (``make test-daemons``; CI runs them as root after
``make test-daemons-install``). A daemon that cannot start fails the test with its own output.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_runs import finish, free_port, hetdiff, toy_config


@pytest.fixture(scope="session")
def local_run(tmp_path_factory) -> Path:
    """The toy run trained by the local launcher: the reference every launcher must equal."""
    folder = tmp_path_factory.mktemp("local")
    finish(hetdiff("run", str(toy_config(folder)), "--out", str(folder / "run")))
    return folder / "run"


def _fail_with(what: str, *logs: Path, extra: str = "") -> None:
    text = [extra] if extra else []
    for log in logs:
        if log.is_file():
            text.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]))
    pytest.fail(f"{what} did not start:\n" + "\n".join(text), pytrace=False)


def _require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: `make test-daemons-install` (as root) installs "
            "slurm-wlm and munge",
            pytrace=False,
        )


def _start_munged(folder: Path) -> bool:
    """Make sure a munged answers; returns whether this fixture started it."""
    probe = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, text=True)
    if probe.returncode == 0:
        return False
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    started = subprocess.run(
        ["munged", "--force", f"--log-file={folder / 'munged.log'}"],
        capture_output=True, text=True,
    )  # fmt: skip
    probe = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, text=True)
    if started.returncode != 0 or probe.returncode != 0:
        _fail_with("munged", folder / "munged.log", extra=started.stderr + probe.stderr)
    return True


SLURM_CONF = """ClusterName=hetdiff-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
ReturnToService=2
KillWait=2
MinJobAge=600
JobRequeue=1
InactiveLimit=0
NodeName={host} CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm cluster on this machine; yields its slurm.conf (SLURM_CONF is set for
    this process and the commands it starts). Stopped by its pid files afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the Slurm fixture starts daemons as root; run as root (CI does)")
    _require_tools("munged", "slurmctld", "slurmd", "sbatch")
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(host=host, d=folder, ctld_port=free_port(), d_port=free_port())
    )
    started_munged = _start_munged(folder)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        for daemon in ("slurmctld", "slurmd"):
            out = subprocess.run([daemon, "-f", str(conf)], capture_output=True, text=True)
            if out.returncode != 0:
                _fail_with(daemon, folder / f"{daemon}.log", extra=out.stderr)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
            if state.stdout.strip() in ("idle", "mixed", "allocated"):
                break
            time.sleep(0.5)
        else:
            _fail_with(
                f"the Slurm node (state {state.stdout.strip() or state.stderr.strip()!r})",
                folder / "slurmctld.log", folder / "slurmd.log",
            )  # fmt: skip
        yield conf
    finally:
        for daemon in ("slurmd", "slurmctld"):
            pid_file = folder / f"{daemon}.pid"
            if pid_file.is_file():
                _stop(int(pid_file.read_text().strip()))
        if started_munged:
            pid_file = Path("/run/munge/munged.pid")
            if pid_file.is_file():
                _stop(int(pid_file.read_text().strip()))
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


def _stop(pid: int, timeout: float = 10) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A two-node Ray cluster on localhost: the head offers the custom resource ``island-a``,
    a second node ``island-b`` (1 CPU each, own ports). Yields the address (RAY_ADDRESS is set
    for this process and the commands it starts); each node is a ``ray start --block`` process,
    stopped by its pid (it takes the processes it started with it)."""
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.is_file():
        pytest.fail("ray not installed: `make test-daemons-install`", pytrace=False)
    folder = tmp_path_factory.mktemp("ray")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus=1", "--num-gpus=0", "--object-store-memory=100000000",
              "--disable-usage-stats"]  # fmt: skip
    nodes = []
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        head_log = open(folder / "head.log", "w")
        nodes.append(subprocess.Popen(
            [str(ray_bin), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--include-dashboard=false", f"--temp-dir={folder / 'tmp'}",
             '--resources={"island-a": 1}', *common],
            stdout=head_log, stderr=subprocess.STDOUT, env=env,
        ))  # fmt: skip
        _wait_for_ray(address, 1, nodes, folder / "head.log")
        node_log = open(folder / "node.log", "w")
        nodes.append(subprocess.Popen(
            [str(ray_bin), "start", f"--address={address}", "--node-ip-address=127.0.0.1",
             f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
             '--resources={"island-b": 1}', *common],
            stdout=node_log, stderr=subprocess.STDOUT, env=env,
        ))  # fmt: skip
        _wait_for_ray(address, 2, nodes, folder / "node.log")
        previous = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = address
        yield address
        if previous is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous
    finally:
        for node in reversed(nodes):
            _stop(node.pid, timeout=30)


def _wait_for_ray(address: str, count: int, nodes: list, log: Path) -> None:
    """Wait until ``count`` nodes are alive (asked in a separate driver process)."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='error'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        if any(node.poll() is not None for node in nodes):
            _fail_with("a Ray node", log)
        out = subprocess.run(
            [sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=60
        )
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    _fail_with(f"{count} Ray nodes", log, extra=out.stderr[-2000:])
