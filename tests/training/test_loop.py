"""The training loop in-process: resume, logs, warmup, accumulation, divergence, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hetdiff.errors import HetdiffError
from hetdiff.training import state as state_io
from hetdiff.training.loop import (
    TrainConfig,
    TrainingDivergedError,
    lr_at,
    resolve_mixed_precision,
    train,
    warmup_factor,
)
from hetdiff.training.resume import data_fingerprint


def _states_equal(root_a, root_b) -> None:
    """Bitwise equality of two committed training states (model, EMA, optimizer, RNG, meta)."""
    a, b = state_io.load_train_state(root_a), state_io.load_train_state(root_b)
    assert a.step == b.step
    for part in ("model", "ema", "rng"):
        da, db = getattr(a, part), getattr(b, part)
        assert da.keys() == db.keys()
        for key in da:
            assert torch.equal(da[key], db[key]), f"{part}.{key}"
    skel_a, ta = state_io.flatten_tree(a.optimizer)
    skel_b, tb = state_io.flatten_tree(b.optimizer)
    assert skel_a == skel_b
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert {k: v for k, v in a.meta.items() if k != "elapsed_s"} == {
        k: v for k, v in b.meta.items() if k != "elapsed_s"
    }


def _log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_continues_bitwise_and_ignores_half_written_state(toy, tmp_path):
    images, labels = toy.toy_data()
    full = train(toy.make_model(), images, labels, toy.flow_loss, toy.base_config(steps=8),
                 tmp_path / "full")  # fmt: skip
    train(toy.make_model(), images, labels, toy.flow_loss, toy.base_config(steps=4),
          tmp_path / "part")  # fmt: skip
    # A save of step 8 killed half-way: a stray directory that no manifest names.
    stray = state_io.prepare_step_dir(tmp_path / "part" / "train_state", 8)
    (stray / "model.safetensors").write_bytes(b"garbage")
    # A different initialization proves the weights come from the state, not the model object.
    resumed = train(toy.make_model(seed=99), images, labels, toy.flow_loss,
                    toy.base_config(steps=8), tmp_path / "part", resume=True)  # fmt: skip
    _states_equal(tmp_path / "full" / "train_state", tmp_path / "part" / "train_state")
    assert resumed.final_loss == full.final_loss
    for key, value in full.ema_state.items():
        assert torch.equal(value, resumed.ema_state[key])
    log_full, log_part = _log(full.log_path), _log(resumed.log_path)
    assert [r["step"] for r in log_part] == list(range(1, 9))  # appended, no duplicates
    assert [r["loss"] for r in log_part] == [r["loss"] for r in log_full]
    assert log_part[-1]["elapsed_s"] >= log_part[3]["elapsed_s"]


def test_log_lines_and_warmup_learning_rates(toy, tmp_path):
    images, labels = toy.toy_data()
    config = toy.base_config(steps=8, log_every=3, warmup_steps=4, checkpoint_every=100)
    result = train(toy.make_model(), images, labels, toy.flow_loss, config, tmp_path)
    records = _log(result.log_path)
    assert [r["step"] for r in records] == [3, 6, 8]
    for record in records:
        assert set(record) == {"step", "loss", "lr", "images_per_s", "elapsed_s"}
        assert math.isfinite(record["loss"]) and record["images_per_s"] > 0
        # The logged lr is the one the step used: step k (1-based) uses lr_at(k - 1).
        assert record["lr"] == pytest.approx(lr_at(record["step"] - 1, config), rel=1e-12)
    assert [r["elapsed_s"] for r in records] == sorted(r["elapsed_s"] for r in records)
    saved_config = json.loads((tmp_path / "train_config.json").read_text())
    assert saved_config["mixed_precision_resolved"] == "no" and saved_config["steps"] == 8


def test_warmup_factor_values():
    assert [warmup_factor(k, 4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    assert lr_at(1, TrainConfig(lr=0.1, warmup_steps=10)) == pytest.approx(0.02)


def _denoise_loss(scale: float):
    def loss_fn(model, x0, labels, generator):  # deterministic: no batch-dependent randomness
        t = torch.full((x0.shape[0],), 0.5)
        return scale * (model(0.5 * x0, t) - x0).pow(2).mean(dim=(1, 2, 3))

    return loss_fn


def test_gradient_accumulation_equals_full_batch(toy, tmp_path):
    # Losses scaled by 1e-8 make the gradients comparable to AdamW's eps, so the update is
    # sensitive to the gradient's scale (a missing / grad_accum would show).
    images, labels = toy.toy_data()

    def run(name: str, grad_accum: int, scale: float):
        model = toy.make_model(dropout=0.0)
        config = toy.base_config(steps=5, grad_accum=grad_accum, grad_clip=0.0)
        train(model, images, labels, _denoise_loss(scale), config, tmp_path / name)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), _log(
            tmp_path / name / "log.jsonl"
        )

    full, log_full = run("full", 1, 1e-8)
    accumulated, log_acc = run("acc", 2, 1e-8)
    doubled, _ = run("doubled", 1, 2e-8)
    torch.testing.assert_close(accumulated, full, rtol=0, atol=1e-6)
    assert (doubled - full).abs().max() > 1e-3  # the check above can tell a 2x gradient apart
    for a, b in zip(log_acc, log_full, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_on_checkpoint_called_with_ema_at_checkpoints_and_end(toy, tmp_path):
    images, labels = toy.toy_data()
    calls = []
    result = train(
        toy.make_model(),
        images,
        labels,
        toy.flow_loss,
        toy.base_config(steps=10, checkpoint_every=4),
        tmp_path,
        on_checkpoint=lambda ema, step: calls.append((step, ema)),
    )
    assert [step for step, _ in calls] == [4, 8, 10]
    for key, value in result.ema_state.items():
        assert torch.equal(calls[-1][1][key], value)
    assert not torch.equal(calls[0][1]["out.weight"], calls[-1][1]["out.weight"])
    assert result.steps == 10 and state_io.read_manifest(tmp_path / "train_state")["step"] == 10


def _nan_at(step: int):
    calls = {"n": 0}

    def loss_fn(model, x0, labels, generator):
        calls["n"] += 1
        loss = (model(x0, torch.zeros(x0.shape[0])) - x0).pow(2).mean(dim=(1, 2, 3))
        return loss * math.nan if calls["n"] == step else loss

    return loss_fn


def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy, tmp_path):
    images, labels = toy.toy_data()
    config = toy.base_config(steps=12, checkpoint_every=4)
    with pytest.raises(TrainingDivergedError) as info:
        train(toy.make_model(), images, labels, _nan_at(6), config, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "loss became nan at step 6; last good checkpoint at step 4 kept in" in message
    assert "--lr" in message
    kept = state_io.load_train_state(tmp_path / "train_state")  # intact, verified by hash
    assert kept.step == 4 and all(torch.isfinite(v).all() for v in kept.model.values())
    assert [r["step"] for r in _log(tmp_path / "log.jsonl")] == [1, 2, 3, 4, 5]
    with pytest.raises(TrainingDivergedError, match="no checkpoint was written yet"):
        train(toy.make_model(), images, labels, _nan_at(2), config, tmp_path / "early")


def test_resume_refuses_changed_math_data_or_missing_state(toy, tmp_path):
    images, labels = toy.toy_data()
    train(toy.make_model(), images, labels, toy.flow_loss, toy.base_config(steps=4), tmp_path)
    cases = [
        (toy.base_config(steps=8, lr=2e-2), images, "lr is 0.02 but"),
        (toy.base_config(steps=8, batch_size=8), images, "batch_size is 8 but"),
        (toy.base_config(steps=8, seed=8), images, "seed is 8 but"),
        (toy.base_config(steps=8), images + 1, "training data differs"),
        (toy.base_config(steps=2), images, "beyond steps=2"),
    ]
    for config, data, match in cases:
        with pytest.raises(HetdiffError, match=match):
            train(toy.make_model(), data, labels, toy.flow_loss, config, tmp_path, resume=True)
    with pytest.raises(HetdiffError, match="already holds training state at step 4"):
        train(toy.make_model(), images, labels, toy.flow_loss, toy.base_config(), tmp_path)
    with pytest.raises(HetdiffError, match="nothing to resume"):
        train(toy.make_model(), images, labels, toy.flow_loss, toy.base_config(),
              tmp_path / "new", resume=True)  # fmt: skip


def test_truncated_train_state_is_refused_on_resume(toy, tmp_path):
    images, labels = toy.toy_data()
    train(toy.make_model(), images, labels, toy.flow_loss, toy.base_config(steps=4), tmp_path)
    path = tmp_path / "train_state" / "step-00000004" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(HetdiffError, match="model.safetensors is truncated"):
        train(toy.make_model(), images, labels, toy.flow_loss, toy.base_config(steps=8),
              tmp_path, resume=True)  # fmt: skip


def test_bad_inputs_and_config_are_one_line_errors(toy, tmp_path):
    images, labels = toy.toy_data()
    with pytest.raises(HetdiffError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(HetdiffError, match="steps must be a positive integer"):
        TrainConfig(steps=0)
    with pytest.raises(HetdiffError, match="not divisible by processes x grad_accum = 3"):
        train(toy.make_model(), images, labels, toy.flow_loss,
              toy.base_config(grad_accum=3), tmp_path / "a")  # fmt: skip
    with pytest.raises(HetdiffError, match="labels must be int64"):
        train(toy.make_model(), images, labels.float(), toy.flow_loss, toy.base_config(),
              tmp_path / "b")  # fmt: skip
    with pytest.raises(HetdiffError, match=r"per-sample loss of shape \(16,\)"):
        train(toy.make_model(), images, labels, lambda *a: toy.flow_loss(*a).mean(),
              toy.base_config(), tmp_path / "c")  # fmt: skip
    assert resolve_mixed_precision("auto", torch.device("cpu")) == "no"


def test_tuple_of_target_columns_reaches_the_loss_row_aligned(toy, tmp_path):
    images, labels = toy.toy_data()
    row_ids = torch.arange(len(labels)) * 10  # a second column that names each row
    seen = []

    def loss_fn(model, x0, targets, generator):
        seen.append((x0, targets))
        return toy.flow_loss(model, x0, None, generator)

    config = toy.base_config(steps=4, grad_accum=2)
    train(toy.make_model(), images, (labels, row_ids), loss_fn, config, tmp_path)
    assert len(seen) == 8  # 4 steps x 2 micro-steps
    for x0, targets in seen:
        assert isinstance(targets, tuple) and len(targets) == 2
        first, second = targets
        assert first.shape == second.shape == (8,) and first.dtype == second.dtype == torch.int64
        rows = second // 10
        assert torch.equal(first, labels[rows]) and torch.equal(x0, images[rows])


def test_fingerprint_covers_every_column_and_keeps_the_single_column_value(toy, tmp_path):
    images, labels = toy.toy_data()
    # The values states written before multi-column targets recorded: they must still resume.
    assert data_fingerprint(images, labels) == "ccfdf442cd803e75"
    assert data_fingerprint(images, None) == "4568fbd870206f00"
    assert data_fingerprint(images, (labels,)) == data_fingerprint(images, labels)
    second = torch.arange(len(labels))
    assert data_fingerprint(images, (labels, second)) != data_fingerprint(images, labels)
    assert data_fingerprint(images, (labels, second)) != data_fingerprint(images, (second, labels))

    train(toy.make_model(), images, (labels, second), toy.flow_loss, toy.base_config(steps=4),
          tmp_path)  # fmt: skip
    changed = second.clone()
    changed[0] = 99
    with pytest.raises(HetdiffError, match="training data differs") as err:
        train(toy.make_model(), images, (labels, changed), toy.flow_loss,
              toy.base_config(steps=8), tmp_path, resume=True)  # fmt: skip
    assert "\n" not in str(err.value)
    resumed = train(toy.make_model(), images, (labels, second), toy.flow_loss,
                    toy.base_config(steps=8), tmp_path, resume=True)  # fmt: skip
    assert resumed.steps == 8
    with pytest.raises(HetdiffError, match=r"target column 1 must be int64 of shape \(40,\)"):
        train(toy.make_model(), images, (labels, second.float()), toy.flow_loss,
              toy.base_config(), tmp_path / "bad")  # fmt: skip
    with pytest.raises(HetdiffError, match="at least one column"):
        train(toy.make_model(), images, (), toy.flow_loss, toy.base_config(), tmp_path / "none")
