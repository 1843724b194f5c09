"""Distillation's loss: |v_student - u_teacher|^2 on the flow path, t drawn inside the
teacher's range, the teacher given as a velocity function."""

from __future__ import annotations

import torch

from hetdiff.models.dit import DiT, DiTConfig
from hetdiff.objectives.velocity import FlowVelocity
from hetdiff.training.distill import distill_loss_fn

RES, CLASSES = 8, 10


def test_distill_loss_is_the_squared_gap_to_the_teacher_velocity():
    torch.manual_seed(0)
    config = DiTConfig(input_size=RES, in_channels=1, hidden_size=32, depth=1, num_heads=2,
                       num_classes=CLASSES)  # fmt: skip
    teacher_net, student = DiT(config), DiT(config)
    for p in [*teacher_net.parameters(), *student.parameters()]:
        p.data.normal_(0, 0.1)
    teacher = FlowVelocity(teacher_net)
    teacher.t_range = (0.2, 0.7)  # t is drawn inside the teacher's range
    x0 = torch.randn(6, 1, RES, RES)
    labels = torch.arange(6)
    loss_fn = distill_loss_fn(teacher, teacher.t_range, label_dropout=0.0, time_sampling="uniform")
    assert torch.equal(loss_fn(teacher_net, x0, labels, torch.Generator().manual_seed(3)),
                       torch.zeros(6))  # fmt: skip
    got = loss_fn(student, x0, labels, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # replay the draws: dropout coins, t, eps
    torch.rand(6, generator=gen)
    t = 0.2 + 0.5 * torch.rand(6, generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    with torch.no_grad():
        gap = student(x_t, t * 1000, labels) - teacher_net(x_t, t * 1000, labels)
    assert torch.allclose(got, gap.pow(2).flatten(1).mean(1), rtol=1e-5, atol=0)


def test_compile_is_the_trainers_speed_setting():
    """``DistillSettings.compile`` reaches the loop's TrainConfig (the trainer compiles the
    student); off by default. The compiled run itself: tests/cli/test_distill_cli.py (slow)."""
    from hetdiff.config import DistillSettings
    from hetdiff.training.expert import train_config_for

    assert train_config_for(DistillSettings(compile=True), 100).compile is True
    assert train_config_for(DistillSettings(), 100).compile is False
