"""Intermediate bounds by a branch-and-bound per neuron: tighter than the root's, never past the exact range."""

import pytest
import torch

from domains.bab import SplitDeepPoly, Subproblems
from domains.intermediate_bab import IntermediateBaBConfig, lowest_per_spec, tighten, tighten_node
from tests.random_nets import KINDS, random_network
from tests.soundness import concrete_minimum, exact_range


def _root(kind, seed, radius=0.3):
    """A random net, its input box and an alpha-optimised single-sample domain (intermediate bounds refined)."""
    _, net = random_network(seed, kind, detach=True)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, *net.input_shape, generator=g)
    C = torch.randn(1, 2, *net.output_shape, generator=g)
    dp = SplitDeepPoly(net, x - radius, x + radius)
    dp.optimize(C, iterations=5)
    return net, dp, C


# the conv net's MILPs take seconds each: one seed, a smaller box
@pytest.mark.parametrize("kind, seed, radius",
                         [(kind, s, 0.3) for kind in ("fc", "residual") for s in range(3)] + [("conv", 0, 0.1)])
def test_tightened_bounds_contain_the_exact_range(kind, seed, radius):
    """Every tightened neuron bound lies between the root's and the exact MILP range (checked for the two
    neurons of each node tightened most); some move."""
    net, dp, _ = _root(kind, seed, radius)
    moved = 0
    for node in sorted(dp.refine_idx):
        lo, hi = (t.flatten() for t in dp.bounds[node])
        new_lo, new_hi = (t.flatten() for t in tighten_node(dp, node, IntermediateBaBConfig(rounds=4, width=4),
                                                                 float("inf")))
        assert (new_lo >= lo).all() and (new_hi <= hi).all()
        gain = (new_lo - lo) + (hi - new_hi)
        for i in gain.argsort(descending=True)[:2].tolist():
            low, high = exact_range(net, dp.lower, dp.upper, node, i)
            assert new_lo[i] <= low + 1e-5 and new_hi[i] >= high - 1e-5
        moved += int(((new_lo > lo + 1e-4) | (new_hi < hi - 1e-4)).sum())
    assert moved > 0


@pytest.mark.parametrize("kind", KINDS)
def test_tightening_every_node_keeps_the_final_bound_sound(kind):
    """After tightening node by node (later nodes recomputed), intermediate values of sampled points lie within
    the bounds and the final bound, re-optimised, stays below the sampled minimum and above the root's."""
    net, dp, C = _root(kind, 0)
    before = dp.bound(C)
    tighten(dp, IntermediateBaBConfig(rounds=3, width=4), float("inf"))
    g = torch.Generator().manual_seed(1)
    points = dp.lower + (dp.upper - dp.lower) * torch.rand(4000, *net.input_shape, generator=g)
    with torch.no_grad():
        values = net(points, return_all=True)
    for node, (lo, hi) in dp.bounds.items():
        assert (values[node] >= lo - 1e-5).all() and (values[node] <= hi + 1e-5).all()
    after = dp.optimize(C, iterations=5, intermediate=False)
    assert (after <= concrete_minimum(net, dp.lower, dp.upper, C) + 1e-5).all()
    assert (after >= before - 1e-5).all()


def test_lowest_per_spec_takes_the_lowest_of_each_search():
    lower = torch.tensor([5.0, 1.0, 3.0, 2.0, 0.0, 4.0, 9.0])
    spec = torch.tensor([0, 0, 1, 0, 1, 1, 2])
    sub = Subproblems(bounds={}, split={}, alpha={}, beta={}, gamma={}, lower=lower.unsqueeze(1),
                      depth=torch.zeros(7, dtype=torch.long), spec=spec)
    assert lowest_per_spec(sub, 2).tolist() == [False, True, True, True, True, False, True]
