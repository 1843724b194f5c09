"""The judge metrics of one sample set as ``evaluate`` reports them (digits, 8 px)."""

import pytest

from hetdiff.config import EvalSettings
from hetdiff.data.datasets import load_dataset
from hetdiff.data.partition import cluster_dataset
from hetdiff.metrics.judge import holdout_rows
from hetdiff.metrics.judged import judge_summary, judged_metrics, judged_reference


def test_real_samples_score_well_and_missing_classes_lose_recall(tmp_path, monkeypatch):
    monkeypatch.setenv("HETDIFF_CACHE_DIR", str(tmp_path))
    digits = load_dataset("digits", resolution=8)
    partition = cluster_dataset(digits, 2, fine=8, features="pixels", progress=False)
    settings = EvalSettings(judge_steps=300, bootstrap=100)
    reference = judged_reference(digits, partition, settings)
    assert reference.features.shape == (449, 128)  # the judge's held-out rows
    _, held = holdout_rows(len(digits), settings.judge_holdout)
    # other real digits (the judge trained on them, so not a fair "sample"; enough here)
    images, labels = digits.images[:449], digits.labels[:449]
    real = judged_metrics(reference, images, labels)
    assert real["class_accuracy"] >= 0.95 and real["precision"] >= 0.8 and real["recall"] >= 0.8
    for key in ("precision", "recall", "density", "coverage", "class_accuracy"):
        low, high = real[f"{key}_ci"]
        assert low <= real[key] <= high
    assert real["clusters"]["total_variation"] < 0.1
    # FD's basic interval is moved by the bootstrap's bias estimate, below the plug-in value
    assert real["fd_judge_ci"][0] < real["fd_judge_ci"][1] < real["fd_judge"]
    keep = labels < 5
    half = judged_metrics(reference, images[keep], labels[keep], own_cluster=0)
    assert half["recall_ci"][1] < real["recall_ci"][0]
    assert half["coverage_ci"][1] < real["coverage_ci"][0]
    assert half["fd_judge_ci"][0] > real["fd_judge_ci"][1]
    assert half["precision"] >= 0.8 and "fd_judge_own_cluster" in half
    summary = judge_summary(reference)
    assert summary["heldout_accuracy"] >= 0.9 and summary["reference_n"] == len(held)
    assert summary["features"] == "judge" and summary["nearest_k"] == 5


def test_settings_are_checked():
    from hetdiff.errors import HetdiffError

    with pytest.raises(HetdiffError, match="judge_holdout"):
        EvalSettings(judge_holdout=1.0)
    with pytest.raises(HetdiffError, match="bootstrap"):
        EvalSettings(bootstrap=-1)


def test_samples_drawn_without_a_class_have_no_class_accuracy(tmp_path, monkeypatch):
    """An expert alone samples with the null label -1 (no class asked for): class accuracy is
    undefined for those rows, not 0 (it read 0.0 for every expert of a run, as the judge never
    predicts -1); a set mixing null and real labels is scored on the labelled rows alone."""
    import torch

    monkeypatch.setenv("HETDIFF_CACHE_DIR", str(tmp_path))
    digits = load_dataset("digits", resolution=8)
    reference = judged_reference(digits, None, EvalSettings(judge_steps=100, bootstrap=20))
    images, labels = digits.images[:64], digits.labels[:64]
    unconditional = judged_metrics(reference, images, torch.full_like(labels, -1))
    assert "class_accuracy" not in unconditional and "class_accuracy_ci" not in unconditional
    assert "fd_judge" in unconditional  # the other metrics stay
    mixed = labels.clone()
    mixed[::2] = -1
    scored = judged_metrics(reference, images, mixed)
    predicted = reference.judge.predict(images[1::2])
    expected = (predicted == labels[1::2]).double().mean().item()
    assert expected > 0.5 and scored["class_accuracy"] == pytest.approx(expected)
