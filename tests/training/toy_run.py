"""A tiny model, data set and loss for the training-loop tests; also a script for subprocesses.

Run as a script (plain python or under torchrun) it trains the toy model and dumps the final
model weights, EMA weights and optimizer state of its rank into ``--dump``-rank{r}.safetensors.
``--kill-at-step k`` sends SIGKILL to itself inside the loss of optimizer step k (mid-step).
``--stream`` feeds the same data as a ``BatchStream`` (``ToyStream``) and dumps the sample
indices the rank decoded as ``decoded``.
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

from hetdiff.training.batches import epoch_permutation
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


class ToyStream:
    """A ``BatchStream`` over (images, labels) in the in-memory loop's order: epoch e visits
    ``epoch_permutation(N, seed, e)`` and drops the tail, so a run on it takes the rows a run on
    the tensors takes. ``decoded`` lists the sample indices it returned ("decoded")."""

    def __init__(self, images: Tensor, labels: Tensor | None, seed: int) -> None:
        self.images, self.labels, self.seed = images, labels, seed
        self.fingerprint = "toy-stream"
        self.epoch, self.position, self.decoded = 0, 0, []

    def __len__(self) -> int:
        return self.images.shape[0]

    def next_batch(self, size, keep=None):
        if self.position + size > len(self):
            self.epoch, self.position = self.epoch + 1, 0
        order = epoch_permutation(len(self), self.seed, self.epoch)
        rows = order[self.position : self.position + size]
        self.position += size
        rows = rows if keep is None else rows[torch.as_tensor(keep)]
        self.decoded += rows.tolist()
        return self.images[rows], None if self.labels is None else self.labels[rows]

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


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


def dump_state(
    path: Path,
    model: nn.Module,
    ema_state: dict[str, Tensor],
    optimizer_state,
    extra: dict[str, Tensor] | None = None,
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | (extra or {})
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
    parser.add_argument("--stream", action="store_true")
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
    config = base_config(steps=args.steps)
    data = ToyStream(images, labels, config.seed) if args.stream else images
    result = train(
        model, data, None if args.stream else labels, loss_fn, config, args.out,
        resume=args.resume,
    )  # fmt: skip
    rank = int(os.environ.get("RANK", "0"))
    extra = {"decoded": torch.tensor(data.decoded)} if args.stream else {}
    dump_state(
        Path(f"{args.dump}-rank{rank}.safetensors"),
        model,
        result.ema_state,
        captured["opt"].state_dict(),
        extra,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
