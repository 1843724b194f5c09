import torch

from hetdiff.objectives.paths import flow_interpolate


def test_flow_interpolate_runs_from_data_to_noise():
    """x_t = (1 - t) x0 + t eps: x0 at t = 0, eps at t = 1, per row t of shape (B,)."""
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    x0, eps = torch.ones(3, 2), torch.full((3, 2), 3.0)
    xt = flow_interpolate(x0.double(), eps.double(), t)
    assert torch.allclose(xt[:, 0], torch.tensor([1.0, 1.5, 3.0], dtype=torch.float64))
    assert torch.equal(xt[:, 0], xt[:, 1])
