"""The checkpoint commit protocol under SIGKILL: the process kills itself at each point of the
protocol (``$HETDIFF_TEST_KILL_AT``, ``hetdiff.training.state.kill_point``): before the artifact,
between the artifact and the state, inside the state (a first checkpoint never committed), after
the state. The rerun of ``train-expert``, ``train-router`` and ``hetdiff run`` ends with artifacts
whose bytes (tensors and metadata) equal an uninterrupted run's; no temporary file is left."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from helpers import run_hetdiff as hetdiff

EXPERT = ["train-expert", "--data", "digits", "--resolution", "8", "--objective", "flow",
          "--steps", "6", "--checkpoint-every", "3", "--batch-size", "16",
          "--mixed-precision", "no", "--no-progress"]  # fmt: skip
# (kill point, step): the final checkpoint at 6, and the first one (3) left uncommitted
EXPERT_KILLS = [("before-artifact", 6), ("after-artifact", 6), ("after-state", 6), ("in-state", 3)]


def no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob("*.tmp")], list(folder.rglob("*.tmp"))


@pytest.fixture(scope="module")
def expert_baseline(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("expert-baseline")
    result = hetdiff([*EXPERT, "--out", str(out)])
    assert result.returncode == 0, result.stderr
    return (out / "expert.safetensors").read_bytes()


@pytest.mark.parametrize(("point", "step"), EXPERT_KILLS)
def test_train_expert_killed_at_each_point_resumes_to_the_same_bytes(
    tmp_path, expert_baseline, point, step
):
    out = tmp_path / "e"
    killed = hetdiff([*EXPERT, "--out", str(out)], kill=f"{point}:{step}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if point == "in-state":  # the first checkpoint was never committed: --resume starts over
        assert not (out / "train_state" / "latest.json").exists()
        assert (out / "train_state" / "step-00000003").is_dir()
    resumed = hetdiff([*EXPERT, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "expert.safetensors").read_bytes() == expert_baseline
    no_temporaries(out)
    again = hetdiff([*EXPERT, "--out", str(out), "--resume"])  # a finished run: verified
    assert again.returncode == 0, again.stderr
    assert (out / "expert.safetensors").read_bytes() == expert_baseline


def test_resume_of_a_finished_run_restores_a_stale_artifact(tmp_path, expert_baseline):
    """The failure the issue saw: the artifact holds an older checkpoint while the state says
    finished. A resume derives the artifact from the committed state, never reports it stale."""
    out = tmp_path / "e"
    assert hetdiff([*EXPERT, "--out", str(out)]).returncode == 0
    stale = tmp_path / "stale"
    three_steps = [
        *EXPERT[: EXPERT.index("--steps") + 1],
        "3",
        *EXPERT[EXPERT.index("--steps") + 2 :],
    ]
    assert hetdiff([*three_steps, "--out", str(stale)]).returncode == 0
    (out / "expert.safetensors").write_bytes((stale / "expert.safetensors").read_bytes())
    resumed = hetdiff([*EXPERT, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "expert.safetensors").read_bytes() == expert_baseline


def _partition(folder: Path) -> Path:
    from hetdiff.data.datasets import load_dataset
    from hetdiff.data.partition import random_partition

    path = folder / "partition.json"
    random_partition(load_dataset("digits", resolution=8), 2, seed=0).save(str(path))
    return path


def test_train_router_killed_at_each_point_resumes_to_the_same_bytes(tmp_path):
    partition = _partition(tmp_path)
    router = ["train-router", "--data", "digits", "--resolution", "8", "--partition",
              str(partition), "--steps", "6", "--checkpoint-every", "3", "--batch-size", "16",
              "--hidden", "8", "--no-progress"]  # fmt: skip
    base = tmp_path / "baseline"
    assert hetdiff([*router, "--out", str(base)]).returncode == 0
    expected = (base / "router.safetensors").read_bytes()
    for point, step in EXPERT_KILLS:
        out = tmp_path / f"r-{point}"
        killed = hetdiff([*router, "--out", str(out)], kill=f"{point}:{step}")
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        resumed = hetdiff([*router, "--out", str(out), "--resume"])
        assert resumed.returncode == 0, (point, resumed.stderr)
        assert (out / "router.safetensors").read_bytes() == expected, point
        no_temporaries(out)


RUN = """
data = "digits"
resolution = 8
workers = 1
[cluster]
k = 2
fine = 4
features = "pixels"
[[experts]]
objective = "flow"
steps = 8
batch_size = 16
[[experts]]
objective = "flow"
steps = 8
batch_size = 16
[router]
steps = 5
batch_size = 16
checkpoint_every = 2
[sample]
n = 8
steps = 2
strategies = ["top1"]
[evaluate]
n = 8
fid = false
judge = false
"""
ARTIFACTS = ("experts/expert-0/expert.safetensors", "experts/expert-1/expert.safetensors",
             "router/router.safetensors")  # fmt: skip
# (expert 0's kill, the router's kill) per cycle: experts checkpoint at 2, 4, 6, 8 and the
# router at 2, 4, 5; every point is hit once by each, the first-checkpoint one included. A kill
# that leaves expert 0 unfinished fails the run (exit 2, expert 0 named); the rerun resumes it
# and is then killed in the router.
RUN_CYCLES = [
    ("before-artifact:8:expert-0", "in-state:2:router"),
    ("after-artifact:4:expert-0", "before-artifact:5:router"),
    ("after-state:4:expert-0", "after-artifact:5:router"),
    ("in-state:2:expert-0", "after-state:5:router"),
]
# A kill after the final artifact is written leaves a finished, correct expert: the run keeps
# it and goes on to the end (the state that was not committed yet no longer matters).
FINISHED_KILLS = ("after-artifact:8:expert-0", "after-state:8:expert-0")


def test_hetdiff_run_killed_at_each_point_resumes_to_the_same_bytes(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(RUN)
    base = tmp_path / "baseline"
    done = hetdiff(["run", str(config), "--out", str(base)])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    expected = {name: (base / name).read_bytes() for name in ARTIFACTS}
    for expert_kill, router_kill in RUN_CYCLES:
        out = tmp_path / expert_kill.replace(":", "-")
        first = hetdiff(["run", str(config), "--out", str(out)], kill=expert_kill)
        assert first.returncode == 2, first.stdout[-2000:] + first.stderr  # expert 0 died
        assert "expert 0:" in first.stderr and "Traceback" not in first.stderr
        second = hetdiff(["run", str(config), "--out", str(out)], kill=router_kill)
        assert second.returncode == -signal.SIGKILL, second.stdout[-2000:] + second.stderr
        last = hetdiff(["run", str(config), "--out", str(out)])
        assert last.returncode == 0, last.stdout[-2000:] + last.stderr
        for name in ARTIFACTS:
            assert (out / name).read_bytes() == expected[name], (expert_kill, router_kill, name)
        no_temporaries(out)
    for expert_kill in FINISHED_KILLS:
        out = tmp_path / expert_kill.replace(":", "-")
        finished = hetdiff(["run", str(config), "--out", str(out)], kill=expert_kill)
        assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr
        assert "expert 0: trained" in finished.stdout
        for name in ARTIFACTS:
            assert (out / name).read_bytes() == expected[name], (expert_kill, name)
        no_temporaries(out)
