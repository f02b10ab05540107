"""Low-dimensional DeepPoly: sound on every node, at least as tight as DeepPoly, exact where the net is affine."""

import pytest
import torch

from nncert.domains.deeppoly import DeepPoly
from nncert.domains.lowdim import backsubstitute_rows, input_sensitivity, lowdim_bounds, row_lower, supports
from tests.random_nets import KINDS, random_network, random_region
from tests.soundness import assert_node_bounds_hold, concrete_minimum


@pytest.mark.parametrize("kind", KINDS)
def test_node_bounds_hold_at_sampled_points_and_corners(kind):
    net = random_network(0, kind, detach=True)[1]
    assert supports(net)
    for eps in (0.02, 0.1, 0.3):
        lower, upper, _ = random_region(net, 1, n=4, eps=eps)
        with torch.no_grad():
            found = lowdim_bounds(net, lower, upper)
        assert_node_bounds_hold(net, found.bounds, lower, upper)


@pytest.mark.parametrize("kind", ["fc", "residual"])
def test_tighter_than_deeppoly_overall_and_rows_sound(kind):
    """The pre-activation bounds are narrower than DeepPoly's in total (not everywhere: tighter bounds before
    a ReLU can flip its lower slope to one worse for some later neuron), and the stacked final rows lie
    below concrete values."""
    net = random_network(2, kind, detach=True)[1]
    lower, upper, C = random_region(net, 3, n=5, eps=0.2)
    with torch.no_grad():
        found = lowdim_bounds(net, lower, upper)
        dp = DeepPoly(net, lower, upper)
        dp.compute_intermediate_bounds()
        n, m = C.shape[:2]
        owner = torch.arange(n).repeat_interleave(m)
        A_in, const = backsubstitute_rows(net, len(net.nodes) - 1, C.flatten(0, 1), owner, found.lines)
        rows = row_lower(A_in, const, lower, upper, owner).view(n, m)
    pre = {net.nodes[r].inputs[0] for r in net.relu_nodes}
    width = sum(float((found.bounds[i][1] - found.bounds[i][0]).sum()) for i in pre)
    dp_width = sum(float((dp.bounds[i][1] - dp.bounds[i][0]).sum()) for i in pre)
    assert width < dp_width
    assert (rows <= concrete_minimum(net, lower, upper, C) + 1e-5).all()


def test_known_bounds_are_intersected_in():
    """A parent's bounds passed as known are never loosened, and bounds stay sound for the child box."""
    net = random_network(4, "fc", detach=True)[1]
    lower, upper, _ = random_region(net, 5, n=3, eps=0.3)
    with torch.no_grad():
        parent = lowdim_bounds(net, lower, upper)
        mid = (lower + upper) / 2
        child = lowdim_bounds(net, lower, mid, {i: parent.bounds[i] for i in (1, 3)})
    for i in (1, 3):
        assert (child.bounds[i][0] >= parent.bounds[i][0]).all() and (child.bounds[i][1] <= parent.bounds[i][1]).all()
    assert_node_bounds_hold(net, child.bounds, lower, mid)


def test_input_sensitivity_is_the_column_sums_of_the_map_to_the_first_relu():
    net = random_network(0, "fc", detach=True)[1]
    first = net.nodes[net.relu_nodes[0]].inputs[0]
    jacobian = torch.autograd.functional.jacobian(lambda x: net(x[None], return_all=True)[first][0],
                                                  torch.zeros(net.input_shape))
    assert torch.allclose(input_sensitivity(net), jacobian.abs().sum(0))
