"""The pipeline end to end at toy size (digits, 8 px): resume after a kill, isolation of experts,
and refusals before any work starts."""

import dataclasses
import html
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from hetdiff.config import load_config
from hetdiff.errors import HetdiffError
from hetdiff.pipeline import STAGES, Run

TOY = """
data = "digits"
resolution = 8
workers = 1
[cluster]
k = 2
fine = 8
features = "pixels"
[[experts]]
objective = "ddpm"
prediction = "eps"
schedule = "cosine"
steps = {steps0}
batch_size = 32
[[experts]]
objective = "flow"
steps = {steps1}
batch_size = 32
[router]
steps = 20
batch_size = 32
[sample]
n = 8
steps = 4
strategies = ["top1", "full"]
[evaluate]
n = 8
fid = false
judge = false
"""


def toy_config(tmp_path, steps0=30, steps1=400):
    path = tmp_path / "toy.toml"
    path.write_text(TOY.format(steps0=steps0, steps1=steps1))
    return path


def run_cli(args, env_extra=None, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "hetdiff", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env, **kwargs,
    )  # fmt: skip


def test_killed_run_resumes_without_retraining_finished_experts(tmp_path):
    config, out = toy_config(tmp_path), tmp_path / "run"
    proc = run_cli(["run", str(config), "--out", str(out)])
    first = out / "experts" / "expert-0" / "expert.safetensors"
    second_state = out / "experts" / "expert-1" / "train_state" / "latest.json"
    while not second_state.exists():  # expert 0 is done and expert 1 has a checkpoint
        assert proc.poll() is None, proc.stdout.read()  # the run must still be going
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns
    assert not (out / "report.html").exists()

    result = run_cli(["run", str(config), "--out", str(out)])
    log, _ = result.communicate(timeout=600)
    assert result.returncode == 0, log
    assert "stage cluster: done before, skipped" in log
    assert "expert 0: finished before, kept" in log
    assert "expert 1: resuming from its last checkpoint" in log
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["strategies"]) == {"top1", "full"}
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 5  # 2 strategies, 2 experts, clusters
    # a third run does nothing at all
    again = run_cli(["run", str(config), "--out", str(out)])
    log, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and log.count("done before, skipped") == 6


def _train(out, cluster, partition):
    return run_cli(
        ["train-expert", "--data", "digits", "--objective", "flow", "--steps", "25",
         "--batch-size", "16", "--partition", str(partition), "--cluster", str(cluster),
         "--out", str(out), "--no-progress"]
    )  # fmt: skip


def test_each_expert_depends_only_on_its_own_shard(tmp_path):
    """Expert 0 trained beside expert 1 on shard B, and again beside expert 1 on a changed shard
    B': expert 0's weights are bitwise identical; expert 1's differ."""
    from hetdiff.data.datasets import load_dataset
    from hetdiff.data.partition import random_partition

    data = load_dataset("digits")
    base = random_partition(data, 3, seed=0)
    base.save(str(tmp_path / "p1.json"))
    # p2 moves images between clusters 1 and 2 only: cluster 0's shard is unchanged
    clusters = base.clusters.copy()
    ones, twos = (clusters == 1).nonzero()[0], (clusters == 2).nonzero()[0]
    clusters[ones[:50]], clusters[twos[:50]] = 2, 1
    changed = dataclasses.replace(base, clusters=clusters)
    changed.save(str(tmp_path / "p2.json"))
    runs = {}
    for name in ("p1", "p2"):
        procs = [_train(tmp_path / name / f"e{c}", c, tmp_path / f"{name}.json") for c in (0, 1)]
        for proc in procs:
            log, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, log
        runs[name] = [load_file(tmp_path / name / f"e{c}" / "expert.safetensors") for c in (0, 1)]
    w0_a, w0_b = runs["p1"][0], runs["p2"][0]
    assert all(w0_a[k].equal(w0_b[k]) for k in w0_a)
    w1_a, w1_b = runs["p1"][1], runs["p2"][1]
    assert not all(w1_a[k].equal(w1_b[k]) for k in w1_a)


def test_an_output_folder_of_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**load_config().to_dict(), "seed": 7}))
    with pytest.raises(HetdiffError, match="holds another run .*seed"):
        Run(load_config(), out).execute()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(HetdiffError, match="not empty"):
        Run(load_config(), other).execute()
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1


# ----------------------------------------------------------------------------- text runs


TEXT = {"text_encoder": "hash"}
AFTER_EXPERTS = ["sample", "evaluate", "report"]


@pytest.mark.parametrize(
    "change, rerun",
    [
        ({"workers": 1}, []),
        ({"evaluate": {"fid": True}}, ["evaluate", "report"]),
        ({"evaluate": {"n": 256}}, AFTER_EXPERTS),  # more samples are drawn per model
        ({"sample": {"steps": 8}}, AFTER_EXPERTS),
        ({"router": {"steps": 100}}, ["router", *AFTER_EXPERTS]),
        ({"experts": [{"steps": 600}] * 4}, ["experts", *AFTER_EXPERTS]),
        (TEXT, ["experts", "router", *AFTER_EXPERTS]),  # clusters do not read captions
        ({"cluster": {"k": 4, "fine": 32}}, list(STAGES)),
        ({"seed": 1}, list(STAGES)),
    ],
)
def test_a_changed_input_reruns_exactly_the_stages_that_depend_on_it(tmp_path, change, rerun):
    """Markers of a finished run, then the run with one input changed: exactly the stages that
    read that input (or build on one that does) are no longer done."""
    finished = Run(load_config(), tmp_path)
    for stage in STAGES:
        finished.mark(stage)
    assert all(finished.done(stage) for stage in STAGES)
    changed = Run(load_config(overrides=change), tmp_path)
    assert [stage for stage in STAGES if not changed.done(stage)] == rerun


def test_a_folder_of_the_same_run_is_accepted_and_a_changed_one_refused(tmp_path):
    Run(load_config(), tmp_path).check_folder()  # an empty folder: a new run
    (tmp_path / "config.json").write_text(json.dumps(load_config().to_dict()))
    Run(load_config(), tmp_path).check_folder()  # the same config: accepted, resumes
    with pytest.raises(HetdiffError, match="holds another run .*text_encoder"):
        Run(load_config(overrides=TEXT), tmp_path).check_folder()


def text_config(tmp_path, steps=30, prompts=None):
    """The toy run conditioned on captions of the hash encoder, 4 images per prompt grid."""
    text = TOY.format(steps0=steps, steps1=steps)
    text = text.replace("workers = 1\n", 'workers = 1\ntext_encoder = "hash"\n')
    sample = "[sample]\nper_prompt = 4\n"
    if prompts is not None:
        sample += f"prompts = {json.dumps(prompts)}\n"
    path = tmp_path / "text.toml"
    path.write_text(text.replace("[sample]\n", sample))
    return path


def check_text_run(out, prompts):
    """Per-prompt grids listed with their prompts, strategy and expert grids, metrics with the
    captions' labels, a text router and experts, and a report captioning each prompt grid."""
    from hetdiff.experts.router_store import read_router_spec
    from hetdiff.experts.store import list_experts

    assert {spec.text_encoder for _, spec in list_experts(out / "experts")} == {"hash"}
    router = read_router_spec(out / "router")
    assert (router.conditioning, router.text_encoder) == ("text", "hash")
    listing = json.loads((out / "samples" / "prompts.json").read_text())
    assert listing["strategy"] == "top1"
    assert [entry["prompt"] for entry in listing["prompts"]] == prompts
    for i in range(len(prompts)):
        assert (out / "samples" / f"prompt-{i}.png").is_file()
    for name in ("top1", "full", "expert-0", "expert-1"):
        assert (out / "samples" / f"{name}.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["strategies"]) == {"top1", "full"}
    assert "intra_class_diversity" in metrics["strategies"]["top1"]  # labels of the captions
    assert len(metrics["router_by_t"]) == 10
    report = (out / "report.html").read_text()
    assert all(f"&ldquo;{html.escape(prompt)}&rdquo;" in report for prompt in prompts)
    assert report.count("data:image/png;base64,") >= 5 + len(prompts)
    assert "captions embedded by <b>hash</b>" in report


class InProcess:
    """Stands in for subprocess.Popen of ``python -m hetdiff.training.jobs JOB.json``: runs the
    job here."""

    def __init__(self, cmd, **kwargs):
        from hetdiff.training import jobs

        assert cmd[1:3] == ["-m", "hetdiff.training.jobs"]
        self.cmd = cmd
        self.job = jobs.ExpertJob.read(cmd[3])
        self.returncode = jobs.main(cmd[3:])

    def poll(self):
        return self.returncode


def test_text_run_in_one_process(tmp_path, monkeypatch):
    """The text pipeline with its experts trained in this process (the cheap default check)."""
    monkeypatch.setenv("HETDIFF_CACHE_DIR", str(tmp_path / "cache"))
    launched = []
    monkeypatch.setattr(
        subprocess, "Popen", lambda cmd, **kw: launched.append(InProcess(cmd)) or launched[-1]
    )
    prompts = ["a handwritten digit three", "a <b>bold</b> digit & one"]
    config = load_config(text_config(tmp_path, steps=20, prompts=prompts))
    Run(config, tmp_path / "run").execute()
    assert len(launched) == 2 and all(p.job.settings.text_encoder == "hash" for p in launched)
    assert all(p.job.settings.class_conditional for p in launched)
    check_text_run(tmp_path / "run", prompts)


@pytest.mark.slow
def test_text_run_writes_prompt_grids_metrics_and_report(tmp_path):
    """The whole text run from the command line, experts in their own processes (~60-80 s)."""
    from hetdiff.data.captions import default_prompts
    from hetdiff.data.datasets import load_dataset

    out = tmp_path / "run"
    env = {"HETDIFF_CACHE_DIR": str(tmp_path / "cache")}
    result = run_cli(["run", str(text_config(tmp_path)), "--out", str(out)], env_extra=env)
    log, _ = result.communicate(timeout=600)
    assert result.returncode == 0, log
    prompts = default_prompts(load_dataset("digits").class_names)
    assert len(prompts) == 8
    check_text_run(out, prompts)
