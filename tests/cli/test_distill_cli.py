"""hetdiff distill: training lowers the student's gap to the routed ensemble, the student is an
ordinary flow expert that samples through the normal path, and bad inputs are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from hetdiff.cli import main
from hetdiff.errors import HetdiffError
from hetdiff.experts.build import load_velocity_model
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import save_expert
from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.objectives.velocity import FlowVelocity
from hetdiff.training.distill import distill_loss_fn

RES, CLASSES = 8, 10


def write_expert(directory, name, cluster, schedule=None, seed=0, data_spec="digits"):
    """A small random expert of the digits data (DDPM-v on ``schedule``, or flow). Small
    weights and the v parameterization keep the random velocity field bounded (a random eps
    net's x0 = (x_s - sigma eps) / alpha explodes near t = 1), so a student can learn it."""
    torch.manual_seed(seed)
    config = DiTConfig(input_size=RES, in_channels=1, patch_size=2, hidden_size=32, depth=1,
                       num_heads=2, num_classes=CLASSES)  # fmt: skip
    net = DiT(config)
    for p in net.parameters():  # zero-initialized output layers would make every expert 0
        p.data.normal_(0, 0.05)
    spec = ExpertSpec(
        objective="ddpm" if schedule else "flow",
        prediction="v" if schedule else "velocity",
        schedule={"name": schedule} if schedule else None,
        model={"arch": "dit", "name": "test", **config.to_dict()},
        cluster_id=cluster,
        num_clusters=2,
        partition_fingerprint="p1",
        data_spec=data_spec,
        resolution=RES,
        channels=1,
        num_classes=CLASSES,
    )
    save_expert(directory / f"{name}.safetensors", net.state_dict(), spec)


def write_router(path):
    from hetdiff.experts.router_store import RouterSpec, save_router
    from hetdiff.models.router import Router, RouterConfig

    config = RouterConfig(2, RES, 1)
    torch.manual_seed(5)
    router = Router(config)
    for p in router.parameters():
        p.data.normal_(0, 0.3)
    return save_router(path, router.state_dict(), RouterSpec.for_config(config, "p1"))


@pytest.fixture
def registry(tmp_path):
    experts = tmp_path / "experts"
    experts.mkdir()
    write_expert(experts, "a", 0, schedule="cosine", seed=1)
    write_expert(experts, "b", 1, seed=2)
    return experts, write_router(tmp_path / "router.safetensors")


def test_distillation_lowers_its_loss_and_the_student_samples_normally(registry, tmp_path):
    from hetdiff.sampling.ensemble import load_ensemble

    experts, router = registry
    out = tmp_path / "student"
    argv = ["distill", "--experts", str(experts), "--router", str(router), "--model", "tiny",
            "--steps", "80", "--batch-size", "32", "--lr", "2e-3", "--checkpoint-every", "80",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 80 and log[-1]["loss"] < 0.6 * log[0]["loss"], log
    student, spec = load_velocity_model(out / "expert.safetensors")
    assert isinstance(student, FlowVelocity)
    assert (spec.objective, spec.cluster_id, spec.steps, spec.num_classes) == ("flow", None, 80, 10)
    sources = spec.provenance["distilled_from"]["experts"]
    assert [s["cluster_id"] for s in sources] == [0, 1] and sources[0]["objective"] == "ddpm"
    assert (out / "distill_config.json").is_file()
    # on fresh flow-path draws of the data, the student's (EMA) gap to the ensemble is far below
    # that of the zero-output initial student, |u|^2
    from hetdiff.data.datasets import load_dataset

    teacher = load_ensemble(experts, router)
    data = load_dataset("digits", resolution=RES)
    loss_fn = distill_loss_fn(teacher, teacher.t_range, label_dropout=0.1)
    initial = DiT(
        DiTConfig.from_dict({k: v for k, v in spec.model.items() if k not in ("arch", "name")})
    )
    with torch.no_grad():
        trained = loss_fn(
            student.net, data.images[:256], data.labels[:256], torch.Generator().manual_seed(0)
        )
        start = loss_fn(
            initial, data.images[:256], data.labels[:256], torch.Generator().manual_seed(0)
        )
    assert trained.mean() < 0.5 * start.mean(), (float(trained.mean()), float(start.mean()))
    # ... and samples through the normal single-expert path
    png = tmp_path / "grid.png"
    assert main(["sample", "--expert", str(out / "expert.safetensors"), "--n", "4", "--steps",
                 "3", "--out", str(png)]) == 0  # fmt: skip
    assert png.stat().st_size > 0


@pytest.mark.slow  # torch.compile of the student, two experts and the router (cold cache)
def test_distill_compile_trains_the_eager_student(registry, tmp_path):
    """``--compile`` compiles the teacher's networks and the student (torch builds graphs) and
    trains the default's student: the same log steps, weights equal to float rounding."""
    from torch._dynamo.utils import counters

    from hetdiff.experts.store import load_expert_state

    experts, router = registry
    base = ["distill", "--experts", str(experts), "--router", str(router), "--model", "tiny",
            "--steps", "6", "--batch-size", "16", "--checkpoint-every", "6", "--no-progress"]  # fmt: skip
    graphs = counters["stats"]["unique_graphs"]
    assert main([*base, "--out", str(tmp_path / "eager")]) == 0
    assert counters["stats"]["unique_graphs"] == graphs  # the default compiles nothing
    assert main([*base, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    # the student's graph, the router's and the experts' (one graph serves both: same code)
    assert counters["stats"]["unique_graphs"] >= graphs + 3
    eager, _ = load_expert_state(tmp_path / "eager" / "expert.safetensors")
    compiled, _ = load_expert_state(tmp_path / "compiled" / "expert.safetensors")
    assert eager.keys() == compiled.keys()
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-5)


def test_bad_distillation_inputs_are_one_line_errors_that_write_nothing(registry, tmp_path, capsys):
    experts, router = registry
    (experts / "b.safetensors").unlink()
    argv = ["distill", "--experts", str(experts), "--router", str(router), "--steps", "2",
            "--out", str(tmp_path / "s"), "--no-progress", "--allow-missing"]  # fmt: skip
    with pytest.warns(UserWarning, match="renormalizing"):
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "clusters [1] have no expert; pass --partition" in err and "\n" not in err
    assert not (tmp_path / "s").exists()  # refused before anything was written
    write_expert(experts, "b", 1, seed=2, data_spec="mnist5k")
    argv = ["distill", "--experts", str(experts), "--router", str(router), "--steps", "2",
            "--out", str(tmp_path / "s2"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "the experts record data specs ['digits', 'mnist5k']" in err and "\n" not in err
    assert not (tmp_path / "s2").exists()
    from hetdiff.config import DistillSettings

    # a bad strategy is refused when the settings are built, before any ensemble is loaded
    with pytest.raises(
        HetdiffError, match="DistillSettings.strategy 'best' is unknown; use one of"
    ):
        DistillSettings(strategy="best")
