"""Your own DDPM network (any nn.Module with an eps head) mixed with a hetdiff flow expert.

    python examples/own_ddpm_network.py --out runs/own --steps 300
A plain PyTorch network, trained by a plain DDPM loop on its own schedule table, read by
``hetdiff.velocity_expert`` as a velocity on the common time axis, mixes with a flow expert.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import hetdiff

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/own")
parser.add_argument("--steps", type=int, default=300)
args = parser.parse_args()
out = Path(args.out)


class EpsNet(nn.Module):
    """eps-prediction head over (x_s, step s in [0, T-1], cond ignored)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.inp, self.time = nn.Conv2d(1, width, 3, padding=1), nn.Linear(1, width)
        self.out = nn.Sequential(nn.SiLU(), nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x, step, cond=None):
        emb = self.time(torch.as_tensor(step, dtype=x.dtype).reshape(-1, 1) / 1000)
        return self.out(F.silu(self.inp(x) + emb[:, :, None, None]))


torch.manual_seed(0)
images = hetdiff.load_dataset("digits", resolution=8).images  # (N, 1, 8, 8) in [-1, 1]
alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
net, T = EpsNet(), len(alphas_cumprod)
optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
for _ in range(args.steps):  # the plain DDPM objective: |eps_hat(x_s, s) - eps|^2
    x0 = images[torch.randint(len(images), (64,))]
    s, eps = torch.randint(T, (64,)), torch.randn_like(x0)
    a = alphas_cumprod[s].float().reshape(-1, 1, 1, 1)
    loss = F.mse_loss(net(a.sqrt() * x0 + (1 - a).sqrt() * eps, s), eps)
    optimizer.zero_grad(), loss.backward(), optimizer.step()

table = {"name": "table", "alphas_cumprod": alphas_cumprod.tolist()}  # or "linear", "cosine"
mine = hetdiff.velocity_expert(net.eval(), "ddpm", "eps", table)
settings = {"objective": "flow", "steps": args.steps, "class_conditional": False, "progress": False}
flow = hetdiff.load_expert(hetdiff.train_expert("digits", out / "flow", settings, resolution=8))
mixed = hetdiff.make_ensemble([mine, flow])  # no router: equal weights
grids = {}  # one grid per model
for name, model in (("mine", mine), ("flow", flow), ("mixed", mixed)):
    samples = hetdiff.sample(model, n=16, steps=20, shape=(1, 8, 8))
    grids[name] = str(hetdiff.save_images(samples, out / f"{name}.png"))
print(json.dumps({"loss": loss.item(), "t_range": list(mixed.t_range), "grids": grids}))
