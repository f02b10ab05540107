"""Box: sound on random FC / conv / residual nets, exact on a single affine layer, differentiable."""

import pytest
import torch

from nncert.domains import box
from nncert.domains.network import Linear, Network
from tests.random_nets import KINDS, random_network, random_region
from tests.soundness import concrete_minimum


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(6))
def test_box_bounds_contain_concrete_points(kind, seed):
    _, net = random_network(seed, kind)
    lower, upper, C = random_region(net, seed)
    with torch.no_grad():
        bound = box.bound_linear(net, lower, upper, C)
    assert (bound <= concrete_minimum(net, lower, upper, C, seed=seed) + 1e-5).all()


@pytest.mark.parametrize("kind", KINDS)
def test_every_node_interval_contains_samples(kind):
    _, net = random_network(3, kind)
    lower, upper, _ = random_region(net, 3, n=2, eps=0.2)
    with torch.no_grad():
        bounds = box.propagate(net, lower, upper)
        points = lower + (upper - lower) * torch.rand(500, *lower.shape)
        values = [net(p, return_all=True) for p in points]
    for i, (lo, hi) in enumerate(bounds):
        v = torch.stack([vals[i] for vals in values])
        assert (v >= lo - 1e-5).all() and (v <= hi + 1e-5).all(), f"node {i}"


def test_exact_for_one_affine_layer():
    W, b = torch.randn(3, 5), torch.randn(3)
    net = Network.chain((5,), [Linear(W, b)])
    lower, upper = torch.zeros(1, 5), torch.ones(1, 5)
    C = torch.eye(3).unsqueeze(0)
    expected = b + W.clamp(max=0).sum(1)  # minimum of each output over the unit cube
    assert torch.allclose(box.bound_linear(net, lower, upper, C)[0], expected, atol=1e-5)


def test_folding_the_spec_is_tighter_than_output_intervals():
    _, net = random_network(0, "fc")
    lower, upper, C = random_region(net, 0)
    lo, hi = box.propagate(net, lower, upper)[-1]
    naive = torch.einsum("nkj,nj->nk", C.clamp(min=0), lo) + torch.einsum("nkj,nj->nk", C.clamp(max=0), hi)
    assert (box.bound_linear(net, lower, upper, C) >= naive - 1e-5).all()


def test_differentiable_with_respect_to_parameters():
    model, net = random_network(1, "conv")
    lower, upper, C = random_region(net, 1)
    box.bound_linear(net, lower, upper, C).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
