"""Concrete witnesses for soundness tests: node values at sampled points and corners, the smallest value
of C y found by sampling, corners and PGD, and a neuron's exact range by MILP."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from nncert.domains.intermediate_bab import cut_after
from nncert.domains.milp import milp_minimize
from nncert.domains.network import Network
from nncert.domains.pgd import pgd_maximize


def box_points(lower: Tensor, upper: Tensor, samples: int, g: torch.Generator) -> Tensor:
    """Random points and corners of each box: lower, upper (N, *in) -> (N, P, *in).

    All corners for inputs of at most 10 dimensions, ``samples`` random ones otherwise.
    """
    shape = lower.shape[1:]
    dim = lower[0].numel()
    if dim <= 10:
        corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=dim))).reshape(-1, *shape)
    else:
        corners = (torch.rand(samples, *shape, generator=g) < 0.5).float()
    mix = torch.cat([torch.rand(samples, *shape, generator=g), corners])  # (P, *in) in [0, 1]
    return lower.unsqueeze(1) + (upper - lower).unsqueeze(1) * mix


def assert_node_bounds_hold(net: Network, bounds: dict, lower: Tensor, upper: Tensor, samples: int = 512,
                            seed: int = 0, tol: float = 1e-5) -> None:
    """Every node's value at random points and corners of each box lies in its bounds (N, *s_i) each."""
    points = box_points(lower, upper, samples, torch.Generator().manual_seed(seed))  # (N, P, *in)
    with torch.no_grad():
        values = net(points.flatten(0, 1), return_all=True)
    for node, (lo, hi) in bounds.items():
        v = values[node].reshape(*points.shape[:2], *lo.shape[1:])
        assert (v >= lo.unsqueeze(1) - tol).all() and (v <= hi.unsqueeze(1) + tol).all(), node


def concrete_minimum(net: Network, lower: Tensor, upper: Tensor, C: Tensor, samples: int = 512,
                     seed: int = 0) -> Tensor:
    """Smallest C y over random points, box corners and PGD points: (N, K).

    lower, upper (N, *in), C (N, K, n_out). A sound lower bound must never exceed this.
    """
    g = torch.Generator().manual_seed(seed)
    n, k = C.shape[:2]
    points = box_points(lower, upper, samples, g)  # (N, P, *in)
    with torch.no_grad():
        y = net(points.flatten(0, 1)).reshape(n, points.shape[1], -1)
    best = torch.einsum("nkj,npj->nkp", C, y).amin(-1)
    for row in range(k):
        c = C[:, row]
        _, value = pgd_maximize(lambda x, c=c: -(net(x) * c).sum(-1), lower, upper, steps=30, step_size=0.1,
                                restarts=2, generator=g)
        best[:, row] = torch.minimum(best[:, row], -value)
    return best


def exact_range(net: Network, lower: Tensor, upper: Tensor, node: int, i: int) -> tuple[float, float]:
    """min and max of neuron i (flat index) of ``node`` over the box lower, upper (1, *in), by MILP on the
    network cut after ``node``."""
    cut = cut_after(net, node)
    c = torch.zeros(net.shapes[node], dtype=torch.float64).flatten()
    c[i] = 1.0
    low, _ = milp_minimize(cut, lower[0].double(), upper[0].double(), c.view(net.shapes[node]))
    high, _ = milp_minimize(cut, lower[0].double(), upper[0].double(), -c.view(net.shapes[node]))
    return low, -high
