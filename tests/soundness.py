"""Concrete witnesses for soundness tests: the smallest value of C y found by sampling, corners and PGD."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from domains.network import Network
from domains.pgd import pgd_maximize


def concrete_minimum(net: Network, lower: Tensor, upper: Tensor, C: Tensor, samples: int = 512,
                     seed: int = 0) -> Tensor:
    """Smallest C y over random points, box corners and PGD points: (N, K).

    lower, upper (N, *in), C (N, K, n_out). All corners are used for inputs of
    at most 10 dimensions, random corners otherwise. A sound lower bound must
    never exceed this.
    """
    g = torch.Generator().manual_seed(seed)
    n, k = C.shape[:2]
    shape = lower.shape[1:]
    dim = lower[0].numel()
    if dim <= 10:
        corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=dim))).reshape(-1, *shape)
    else:
        corners = (torch.rand(samples, *shape, generator=g) < 0.5).float()
    mix = torch.cat([torch.rand(samples, *shape, generator=g), corners])  # (P, *in) in [0, 1]
    points = lower.unsqueeze(1) + (upper - lower).unsqueeze(1) * mix  # (N, P, *in)
    with torch.no_grad():
        y = net(points.reshape(-1, *shape)).reshape(n, len(mix), -1)
    best = torch.einsum("nkj,npj->nkp", C, y).amin(-1)
    for row in range(k):
        c = C[:, row]
        _, value = pgd_maximize(lambda x, c=c: -(net(x) * c).sum(-1), lower, upper, steps=30, step_size=0.1,
                                restarts=2, generator=g)
        best[:, row] = torch.minimum(best[:, row], -value)
    return best
