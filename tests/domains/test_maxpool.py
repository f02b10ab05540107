"""MaxPool2d: forward as torch's, exact interval image, and a linear relaxation that holds at sampled points and
is exact where one input of each window dominates."""

import pytest
import torch
import torch.nn.functional as F

from nncert.domains.maxpool import MaxPool2d
from nncert.domains.network import Network

POOLS = {
    "2x2": MaxPool2d((2, 2), (2, 2)),
    "3x3-pads-stride1": MaxPool2d((3, 3), (1, 1), (1, 1, 1, 1)),
    "asym-pads-dilation": MaxPool2d((2, 3), (2, 1), (0, 1, 1, 0), (2, 1)),
}


def bound(pool: MaxPool2d, shape=(2, 5, 6)) -> MaxPool2d:
    Network.chain(shape, [pool])  # binds the input shape
    return pool


def boxes(shape, g, dominant: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two input boxes (2, *shape); with ``dominant`` the boxes are disjoint and spread apart, so that in every
    window one input's lower bound is above every other input's upper bound."""
    if dominant:
        centre = torch.randperm(2 * torch.Size(shape).numel(), generator=g).reshape(2, *shape).double()
        return centre - 0.2, centre + 0.2
    centre, radius = torch.randn(2, *shape, generator=g, dtype=torch.float64), torch.rand(2, *shape, generator=g)
    return centre - radius, centre + radius


def samples(lo, hi, g, n=300) -> torch.Tensor:
    corners = (torch.rand(n, *lo.shape, generator=g) < 0.5).double()
    mix = torch.cat([torch.rand(n, *lo.shape, generator=g, dtype=torch.float64), corners])
    return torch.minimum(torch.maximum(lo + (hi - lo) * mix, lo), hi)  # (P, 2, *shape), rounding kept inside


@pytest.mark.parametrize("name", POOLS)
def test_forward_matches_torch_with_negative_inputs(name):
    pool = POOLS[name]
    x = torch.randn(3, 2, 5, 6) - 5
    top, left = pool.pads[2], pool.pads[0]
    if pool.pads[0] == pool.pads[1] and pool.pads[2] == pool.pads[3]:
        expected = F.max_pool2d(x, pool.kernel, pool.stride, (top, left), pool.dilation)
        assert torch.equal(pool.forward(x), expected)


@pytest.mark.parametrize("name", POOLS)
@pytest.mark.parametrize("dominant", [False, True])
def test_relaxation_and_interval_image_hold(name, dominant):
    pool = bound(POOLS[name])
    g = torch.Generator().manual_seed(3)
    lo, hi = boxes((2, 5, 6), g, dominant)
    x = samples(lo, hi, g)
    y = pool.forward(x.flatten(0, 1)).reshape(*x.shape[:2], *pool.out_shape)
    low, high = pool.bounds(lo, hi)
    assert (y >= low).all() and (y <= high).all()
    A = torch.randn(2, 5, *pool.out_shape, generator=g, dtype=torch.float64)
    A_x, const = pool.relax(lo, hi).backward(A)
    exact = torch.einsum("nkchw,pnchw->pnk", A, y)
    linear = torch.einsum("nkchw,pnchw->pnk", A_x, x) + const
    assert (linear <= exact + 1e-9).all()
    if dominant:
        assert torch.allclose(linear, exact)
    else:
        assert not torch.allclose(linear, exact)  # the relaxation is not exact everywhere


def test_lower_line_picks_the_largest_lower_bound():
    pool = bound(MaxPool2d((2, 2), (2, 2)), (1, 2, 2))
    lo = torch.tensor([[[[0.0, 1.0], [-1.0, 0.5]]]])
    hi = lo + torch.tensor([[[[3.0, 0.5], [1.0, 0.2]]]])
    relaxation = pool.relax(lo, hi)
    A_x, const = relaxation.backward(torch.ones(1, 1, 1, 1, 1))
    assert A_x.flatten().tolist() == [0.0, 1.0, 0.0, 0.0] and const.item() == 0.0
    A_x, const = relaxation.backward(-torch.ones(1, 1, 1, 1, 1))  # not exact: y <= max u = 3
    assert A_x.abs().sum().item() == 0.0 and const.item() == -3.0


@pytest.mark.parametrize("name", POOLS)
def test_every_lower_line_weighting_is_sound(name):
    """Random logits of the lower line's convex combination (padding entries included) give a sound relaxation;
    the default logits nearly reproduce the hard choice."""
    pool = bound(POOLS[name])
    g = torch.Generator().manual_seed(4)
    lo, hi = boxes((2, 5, 6), g)
    x = samples(lo, hi, g)
    y = pool.forward(x.flatten(0, 1)).reshape(*x.shape[:2], *pool.out_shape)
    A = torch.randn(2, 5, *pool.out_shape, generator=g, dtype=torch.float64)
    init = pool.init_params(lo, hi)
    params = torch.randn(2, 5, *init.shape[1:], generator=g, dtype=torch.float64) * 3
    exact = torch.einsum("nkchw,pnchw->pnk", A, y)
    for p in (params, init.unsqueeze(1).expand_as(params)):
        A_x, const = pool.relax(lo, hi, p).backward(A)
        assert (torch.einsum("nkchw,pnchw->pnk", A_x, x) + const <= exact + 1e-9).all()
    hard = pool.relax(lo, hi).backward(A)
    soft = pool.relax(lo, hi, init.unsqueeze(1).expand_as(params)).backward(A)
    gap = (torch.einsum("nkchw,pnchw->pnk", hard[0] - soft[0], x) + hard[1] - soft[1]).abs().max()
    assert gap < 0.05 * exact.abs().max()
