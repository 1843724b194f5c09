"""A tiny model, data set and loss for the training-loop tests; also a script for subprocesses.

Run as a script (plain python or under torchrun) it trains the toy model and dumps the final
model weights, EMA weights and optimizer state of its rank into ``--dump``-rank{r}.safetensors.
``--kill-at-step k`` sends SIGKILL to itself inside the loss of optimizer step k (mid-step).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from hetdiff.training.loop import TrainConfig, train
from hetdiff.training.state import flatten_tree


class ToyNet(nn.Module):
    """(B, 1, 8, 8) image + t (B,) -> (B, 1, 8, 8); ~400 parameters, dropout uses torch's RNG."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Conv2d(2, 12, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Conv2d(12, 1, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t_plane = t.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])  # (B, 1, H, W)
        hidden = torch.nn.functional.silu(self.inp(torch.cat([x, t_plane], dim=1)))
        return self.out(self.drop(hidden))


def toy_data(n: int = 40, with_labels: bool = True) -> tuple[Tensor, Tensor | None]:
    generator = torch.Generator().manual_seed(1234)
    images = torch.randn(n, 1, 8, 8, generator=generator).tanh()
    labels = torch.arange(n) % 3 if with_labels else None
    return images, labels


def flow_loss(model: nn.Module, x0: Tensor, labels: Tensor | None, generator: torch.Generator):
    """Flow matching on the toy net: |model(x_t, t) - (eps - x0)|^2 per sample."""
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    t = torch.rand(x0.shape[0], generator=generator, device=x0.device)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    return (model(x_t, t) - (eps - x0)).pow(2).mean(dim=(1, 2, 3))


def make_model(seed: int = 0, dropout: float = 0.1) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet(dropout)


def base_config(**overrides) -> TrainConfig:
    values = dict(
        steps=12,
        batch_size=16,
        lr=1e-2,
        warmup_steps=3,
        grad_clip=1.0,
        ema_decay=0.9,
        checkpoint_every=4,
        log_every=1,
        seed=7,
        progress=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def dump_state(path: Path, model: nn.Module, ema_state: dict[str, Tensor], optimizer_state) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema_state.items()})
    tensors.update(flatten_tree(optimizer_state, "opt")[1])
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    safetensors.torch.save_file(tensors, str(path))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--dump", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at-step", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    calls = {"n": 0}

    def loss_fn(model, x0, labels, generator):
        calls["n"] += 1
        if calls["n"] == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return flow_loss(model, x0, labels, generator)

    captured = {}
    real_adamw = torch.optim.AdamW

    class CapturingAdamW(real_adamw):  # to dump the optimizer state at the end
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            captured["opt"] = self

    torch.optim.AdamW = CapturingAdamW
    model = make_model()
    images, labels = toy_data()
    result = train(
        model, images, labels, loss_fn, base_config(steps=args.steps), args.out, resume=args.resume
    )
    rank = int(os.environ.get("RANK", "0"))
    dump_state(
        Path(f"{args.dump}-rank{rank}.safetensors"),
        model,
        result.ema_state,
        captured["opt"].state_dict(),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
