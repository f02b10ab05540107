"""DeepPoly: sound on random nets, tighter than Box where it should be, exact where no neuron is unstable."""

import time

import pytest
import torch

from nncert.domains import box
from nncert.domains.deeppoly import DeepPoly, exact_by_intervals, min_area_lower_slope, triangle_upper, unstable_indices
from nncert.domains.network import Linear, Network, ReLU
from tests.random_nets import ACTIVATION_KINDS, KINDS, input_fed_conv_network, random_network, random_region
from tests.soundness import assert_node_bounds_hold, concrete_minimum


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(6))
def test_deeppoly_sound(kind, seed):
    # (at least as tight as Box holds by construction: bound() takes the maximum with Box's bound)
    _, net = random_network(seed, kind)
    lower, upper, C = random_region(net, seed)
    with torch.no_grad():
        dp = DeepPoly(net, lower, upper).bound(C)
    assert (dp <= concrete_minimum(net, lower, upper, C, seed=seed) + 1e-5).all()


@pytest.mark.parametrize("kind", KINDS)
def test_intermediate_bounds_sound(kind):
    _, net = random_network(4, kind)
    lower, upper, _ = random_region(net, 4, n=2, eps=0.15)
    with torch.no_grad():
        dp = DeepPoly(net, lower, upper)
        dp.compute_intermediate_bounds()
        points = lower + (upper - lower) * torch.rand(400, *lower.shape)
        values = [net(p, return_all=True) for p in points]
    for i in range(len(net.nodes)):
        lo, hi = dp.bounds[i]
        v = torch.stack([vals[i] for vals in values])
        assert (v >= lo - 1e-5).all() and (v <= hi + 1e-5).all(), f"node {i}"


def test_tighter_than_box_somewhere():
    gains = []
    for seed in range(4):
        _, net = random_network(seed, "fc")
        lower, upper, C = random_region(net, seed, eps=0.15)
        with torch.no_grad():
            gains.append((DeepPoly(net, lower, upper).bound(C) - box.bound_linear(net, lower, upper, C)).max())
    assert max(gains) > 1e-3


def test_exact_on_a_point():
    _, net = random_network(2, "conv")
    x = torch.rand(2, *net.input_shape)
    C = torch.randn(2, 3, *net.output_shape)
    with torch.no_grad():
        bound = DeepPoly(net, x, x).bound(C)
        assert torch.allclose(bound, torch.einsum("nkj,nj->nk", C, net(x)), atol=1e-4)


def test_relaxation_lines():
    lo, hi = torch.tensor([-1.0, -3.0, 1.0, -2.0]), torch.tensor([2.0, 1.0, 2.0, -1.0])
    slope, intercept = triangle_upper(lo, hi)
    assert torch.allclose(slope, torch.tensor([2 / 3, 0.25, 1.0, 0.0]))
    assert torch.allclose(intercept, torch.tensor([2 / 3, 0.75, 0.0, 0.0]))
    assert torch.equal(min_area_lower_slope(lo, hi), torch.tensor([1.0, 0.0, 1.0, 0.0]))


def test_unstable_indices_pads_with_a_valid_index():
    lo = torch.tensor([[-1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
    hi = torch.tensor([[1.0, 2.0, 1.0], [2.0, 2.0, 1.0], [2.0, 2.0, 2.0]])
    idx = unstable_indices(lo, hi)
    assert idx.tolist() == [[0, 2], [2, 2], [0, 0]]


def test_argmin_corner_attains_linear_bound():
    _, net = random_network(5, "fc")
    lower, upper, C = random_region(net, 5)
    with torch.no_grad():
        dp = DeepPoly(net, lower, upper)
        bound, corner = dp.bound_with_argmin(C)
        y = net(corner.reshape(-1, *net.input_shape)).reshape(*C.shape[:2], -1)
    value = (C * y).sum(-1)
    assert (value >= bound - 1e-5).all()


@pytest.mark.parametrize("kind", KINDS)
def test_skipped_nodes_gain_nothing_from_back_substitution(kind):
    """Nodes deemed exact by intervals are not back-substituted; doing it anyway must not tighten them."""
    _, net = random_network(2, kind)
    lower, upper, _ = random_region(net, 2, eps=0.3)
    exact = exact_by_intervals(net)
    pre = {net.nodes[r].inputs[0] for r in net.relu_nodes}
    assert exact & pre  # the first layer's pre-activations
    with torch.no_grad():
        skipping = DeepPoly(net, lower, upper)
        skipping.compute_intermediate_bounds()
        everything = DeepPoly(net, lower, upper)
        everything.pre_activations = pre
        everything.compute_intermediate_bounds()
    for i in exact & pre:
        torch.testing.assert_close(skipping.bounds[i], everything.bounds[i], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_row_chunks_give_the_same_bounds(kind):
    """Back-substituting a few rows at a time (a tiny memory budget) changes nothing."""
    _, net = random_network(3, kind)
    lower, upper, C = random_region(net, 3, eps=0.3)
    with torch.no_grad():
        whole = DeepPoly(net, lower, upper)
        chunked = DeepPoly(net, lower, upper)
        chunked.chunk_elements = 1  # one row (and its negation) per back-substitution
        torch.testing.assert_close(chunked.bound(C), whole.bound(C))
    for i in whole.bounds:
        torch.testing.assert_close(chunked.bounds[i], whole.bounds[i])
    assert any(idx.shape[1] > 1 for idx in chunked.refine_idx.values())  # there were rows to chunk


def test_a_nan_bounded_relu_is_not_relaxed_as_dead():
    """y = relu(x) + relu(x) whose first neuron's bounds became NaN (as a search's bound may): its relaxation
    is unknown, so the bound must prove nothing (not finite), rather than dropping the neuron as dead."""
    net = Network.chain((1,), [Linear(torch.ones(2, 1), torch.zeros(2)), ReLU(),
                               Linear(torch.ones(1, 2), torch.zeros(1))])
    dp = DeepPoly(net, torch.zeros(1, 1), torch.ones(1, 1))
    dp.compute_intermediate_bounds()
    lo, hi = dp.bounds[1]
    lo, hi = lo.clone(), hi.clone()
    lo[0, 0] = hi[0, 0] = float("nan")
    dp.bounds[1] = (lo, hi)
    dp.upper_lines[2] = triangle_upper(lo, hi)
    assert torch.isnan(dp.upper_lines[2][0][0, 0])
    assert not torch.isfinite(dp.linear_lower(dp.output, -torch.ones(1, 1, 1))).any()


def test_rows_past_the_deadline_keep_their_interval_bounds():
    """Back-substitution stops at the deadline: the bounds left are the looser interval ones, still sound."""
    net = input_fed_conv_network(0, side=16)
    x = torch.rand(1, 16, generator=torch.Generator().manual_seed(0))
    lower, upper = x - 0.05, x + 0.05
    full, late = DeepPoly(net, lower, upper), DeepPoly(net, lower, upper)
    late.deadline = time.monotonic() - 1.0
    full.compute_intermediate_bounds()
    late.compute_intermediate_bounds()
    widths = {node: tuple((d.bounds[node][1] - d.bounds[node][0]).sum() for d in (late, full))
              for node in full.refine_idx}
    assert all(w_late > w_full for w_late, w_full in widths.values()), widths
    assert_node_bounds_hold(net, late.bounds, lower, upper, samples=300, seed=0)


@pytest.mark.parametrize("kind", ACTIVATION_KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_deeppoly_with_activations_sound_and_at_least_box(kind, seed):
    """Sigmoid, Tanh, LeakyReLU and MaxPool nets: final and intermediate bounds hold at sampled, corner and PGD
    points, and are never looser than Box."""
    _, net = random_network(seed, kind, detach=True)
    lower, upper, C = random_region(net, seed, eps=0.15)
    with torch.no_grad():
        dp = DeepPoly(net, lower, upper)
        bound = dp.bound(C)
        bx = box.bound_linear(net, lower, upper, C)
        boxes = box.propagate(net, lower, upper)
    assert (bound <= concrete_minimum(net, lower, upper, C, seed=seed) + 1e-5).all()
    assert (bound >= bx - 1e-6).all()
    assert_node_bounds_hold(net, dp.bounds, lower, upper, seed=seed)
    for i, (lo, hi) in dp.bounds.items():  # up to rounding, relative to the bounds' size
        tol = 1e-6 * (1 + torch.maximum(boxes[i][0].abs(), boxes[i][1].abs()))
        assert (lo >= boxes[i][0] - tol).all() and (hi <= boxes[i][1] + tol).all(), i


@pytest.mark.parametrize("kind", ACTIVATION_KINDS)
def test_deeppoly_with_activations_tighter_than_box_somewhere(kind):
    gains = []
    for seed in range(4):
        _, net = random_network(seed, kind, detach=True)
        lower, upper, C = random_region(net, seed, eps=0.15)
        with torch.no_grad():
            gains.append((DeepPoly(net, lower, upper).bound(C) - box.bound_linear(net, lower, upper, C)).max())
    assert max(gains) > 1e-3
