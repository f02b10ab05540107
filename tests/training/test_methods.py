"""The losses offered to one's own training loop: IBP's bounds the CE of every point of the ball, SABR's is
below IBP's (its box lies inside the ball), and both train the parameters."""

import torch
import torch.nn.functional as F
from torch import nn

from nncert.training.methods import ibp_loss, sabr_loss


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    g = torch.Generator().manual_seed(seed)
    return model, torch.rand(6, 1, 4, 4, generator=g), torch.randint(0, 5, (6,), generator=g)


def test_ibp_loss_bounds_the_cross_entropy_of_points_of_the_ball():
    model, x, y = _setup()
    eps = 0.05
    loss = ibp_loss(model, x, y, eps)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        point = (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
        assert F.cross_entropy(model(point), y) <= loss + 1e-6


def test_sabr_loss_is_at_most_ibp_loss_and_both_reach_the_parameters():
    model, x, y = _setup(2)
    ibp, sabr = ibp_loss(model, x, y, 0.1), sabr_loss(model, x, y, 0.1, lam=0.3, pgd_steps=4)
    assert F.cross_entropy(model(x), y) <= ibp + 1e-6 and sabr <= ibp + 1e-6
    assert sabr < ibp - 1e-4  # a box of 0.3 eps is strictly tighter on this net
    for loss in (ibp, sabr):
        grads = torch.autograd.grad(loss, list(model.parameters()))
        assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
