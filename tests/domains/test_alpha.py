"""alpha-CROWN: sound for every slope choice, never worse than DeepPoly after optimisation."""

import math
import time

import pytest
import torch

from nncert.domains.alpha import AlphaDeepPoly, StopBy
from nncert.domains.deeppoly import DeepPoly
from nncert.domains.network import Activation, Linear, Network, ReLU
from tests.random_nets import ACTIVATION_KINDS, KINDS, input_fed_conv_network, random_network, random_region
from tests.soundness import assert_node_bounds_hold, concrete_minimum


@pytest.mark.parametrize("kind", [*KINDS, *ACTIVATION_KINDS])
@pytest.mark.parametrize("seed", range(4))
def test_optimised_bound_sound_and_at_least_deeppoly(kind, seed):
    """Optimised bounds, intermediate ones included, are sound and at least DeepPoly's; the slopes of LeakyReLU,
    Sigmoid and Tanh and MaxPool's lower line are optimised with the ReLU slopes."""
    _, net = random_network(seed, kind, detach=True)
    lower, upper, C = random_region(net, seed, n=2, eps=0.15, rows=3)
    deeppoly = DeepPoly(net, lower, upper).bound(C)
    alpha = AlphaDeepPoly(net, lower, upper)
    optimised = alpha.optimize(C, iterations=15)
    assert (optimised >= deeppoly - 1e-6).all()
    assert (optimised <= concrete_minimum(net, lower, upper, C, seed=seed) + 1e-5).all()
    # the intermediate bounds kept after optimisation are sound too
    assert_node_bounds_hold(net, alpha.bounds, lower, upper, samples=300, seed=seed)
    if kind in ACTIVATION_KINDS:
        assert any(isinstance(net.nodes[node].op, Activation) for _, node in alpha.alpha)


@pytest.mark.parametrize("kind", KINDS)
def test_random_slopes_are_sound(kind):
    """Any alpha in [0, 1], for intermediate and final bounds alike, gives a valid bound."""
    _, net = random_network(7, kind, detach=True)
    lower, upper, C = random_region(net, 7, n=2, eps=0.15, rows=3)
    reference = concrete_minimum(net, lower, upper, C, seed=7)
    for trial in range(5):
        alpha = AlphaDeepPoly(net, lower, upper)
        alpha.create_alpha = True
        g = torch.Generator().manual_seed(trial)
        alpha.compute_intermediate_bounds()
        alpha.linear_lower(alpha.output, C)
        for key in alpha.alpha:
            alpha.alpha[key] = torch.rand(alpha.alpha[key].shape, generator=g)
        alpha.create_alpha = False
        alpha.compute_intermediate_bounds()
        assert (alpha.linear_lower(alpha.output, C) <= reference + 1e-5).all()


def test_optimisation_improves_somewhere():
    gains = []
    for seed in range(3):
        _, net = random_network(seed, "conv", detach=True)
        lower, upper, C = random_region(net, seed, n=2, eps=0.15, rows=3)
        gains.append((AlphaDeepPoly(net, lower, upper).optimize(C, iterations=15)
                      - DeepPoly(net, lower, upper).bound(C)).max())
    assert max(gains) > 1e-2


def test_adam_matches_torch_optim_with_a_learning_rate_per_tensor():
    from nncert.domains.alpha import Adam

    g = torch.Generator().manual_seed(0)
    ours, theirs = [torch.randn(3, 4, generator=g) for _ in range(2)], None
    theirs = [p.clone().requires_grad_(True) for p in ours]
    ours = [p.clone().requires_grad_(True) for p in ours]
    opt_ours = Adam(ours, [0.1, 0.003])
    opt_theirs = torch.optim.Adam([{"params": theirs[:1], "lr": 0.1}, {"params": theirs[1:], "lr": 0.003}])
    for step in range(5):
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            sum(((p - step) ** 3).sum() for p in params).backward()
            opt.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_stop_by_ends_before_a_step_would_pass_the_deadline():
    best = torch.zeros(1, 1)
    now = time.monotonic()
    stop = StopBy(now + 0.2)
    assert not stop(best)  # the first step: nothing known about its length
    time.sleep(0.15)
    assert stop(best)  # a second step of 0.15 s would end past the deadline
    assert StopBy(now + 60, done=lambda b: bool((b >= 0).all()))(best)  # done still ends it
    assert StopBy(now - 1)(best)  # a deadline already passed


def test_optimize_honours_a_deadline():
    _, net = random_network(0, "conv", detach=True)
    lower, upper, C = random_region(net, seed=0, eps=0.1)
    start = time.monotonic()
    dp = AlphaDeepPoly(net, lower, upper)
    bound = dp.optimize(C, iterations=10**6, done=StopBy(start + 1.0))
    assert time.monotonic() - start < 1.1
    assert (bound >= DeepPoly(net, lower, upper).bound(C) - 1e-6).all()  # still a valid, improved bound


def test_intermediate_slopes_reach_the_bounds_of_a_direct_optimisation():
    """An intermediate layer's bounds get as tight as when they are the objective of their own optimisation.

    Back-substituted bounds are intersected with interval bounds; the slopes of a row must still get
    gradients where the interval is (for now) tighter, or that row never improves past it.
    """
    g = torch.Generator().manual_seed(0)
    sizes = [10, 30, 30, 5]
    linears = [Linear(torch.randn(o, i, generator=g) / i ** 0.5, 0.1 * torch.randn(o, generator=g))
               for i, o in zip(sizes[:-1], sizes[1:])]
    net = Network.chain((10,), [linears[0], ReLU(), linears[1], ReLU(), linears[2]])
    hidden = Network.chain((10,), [linears[0], ReLU(), linears[1]])  # up to layer 2's pre-activation
    x = torch.rand(1, 10, generator=g)
    lower, upper = x - 0.6, x + 0.6
    C = torch.randn(1, 3, 5, generator=g)

    def unstable_width(lo, hi):
        return float(((hi - lo) * ((lo < 0) & (hi > 0))).sum())

    full = AlphaDeepPoly(net, lower, upper)
    full.optimize(C, iterations=40)
    both_ways = torch.cat([torch.eye(30), -torch.eye(30)]).unsqueeze(0)  # rows +x_i and -x_i
    direct = AlphaDeepPoly(hidden, lower, upper).optimize(both_ways, iterations=40)
    plain = DeepPoly(hidden, lower, upper).bound(both_ways)
    target = unstable_width(direct[:, :30], -direct[:, 30:])
    assert unstable_width(plain[:, :30], -plain[:, 30:]) > 1.1 * target  # there is something to gain
    assert unstable_width(*full.bounds[3]) <= 1.01 * target


def _input_fed_conv_problem():
    """The 16-dim input conv net of tests.random_nets around a random point, robustness rows of its label."""
    net = input_fed_conv_network(0, side=16)
    x = torch.rand(1, 16, generator=torch.Generator().manual_seed(0))
    label = int(net(x).argmax())
    others = [j for j in range(10) if j != label]
    C = torch.zeros(1, 9, 10)
    C[0, :, label] = 1.0
    C[0, range(9), others] = -1.0
    return net, x - 0.05, x + 0.05, C


def _slope_bytes(dp: AlphaDeepPoly) -> int:
    """Bytes of the slopes an optimisation held, with their gradients and Adam's two moments."""
    return 4 * sum(a.numel() * a.element_size() for a in dp.alpha.values())


def test_capped_optimisation_keeps_its_slopes_under_the_cap_and_stays_sound():
    net, lower, upper, C = _input_fed_conv_problem()
    uncapped = AlphaDeepPoly(net, lower, upper)
    uncapped.optimize(C, iterations=3)
    capped = AlphaDeepPoly(net, lower, upper)
    capped.bound(C)
    capped.drop_stable_rows(list(capped.refine_idx))  # the rows the optimisation will have
    movable = [node for node in capped.refine_idx if capped.has_slopes(node)]
    widest = max(movable, key=lambda node: capped.refine_idx[node].shape[1] * math.prod(net.shapes[node]))
    # room for the final rows and every optimisable node but the widest convolution
    cap = sum(capped.optimization_bytes(node, 2 * capped.refine_idx[node].shape[1]) for node in movable
              if node != widest) + capped.optimization_bytes(capped.output, C.shape[1])
    capped.max_memory = cap
    optimised = capped.optimize(C, iterations=3)
    assert widest in capped.frozen and 0 < _slope_bytes(capped) <= cap
    assert _slope_bytes(capped) < _slope_bytes(uncapped)  # the cap left slopes out
    assert not any(start == widest for start, _ in capped.alpha)
    assert (optimised >= DeepPoly(net, lower, upper).bound(C) - 1e-6).all()
    assert (optimised <= concrete_minimum(net, lower, upper, C, seed=0) + 1e-5).all()
    assert_node_bounds_hold(net, capped.bounds, lower, upper, samples=300, seed=0)


def test_a_cap_below_the_final_rows_skips_the_stage():
    net, lower, upper, C = _input_fed_conv_problem()
    dp = AlphaDeepPoly(net, lower, upper)
    dp.max_memory = 1024
    assert torch.equal(dp.optimize(C, iterations=3), DeepPoly(net, lower, upper).bound(C))
    assert dp.alpha == {}


class Unplanned(AlphaDeepPoly):
    """Every refined node optimised, none frozen: the optimisation without memory planning."""

    def plan_memory(self, rows: int, intermediate: bool) -> bool:
        self.frozen = set()
        return True


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_the_default_cap_keeps_the_bounds_of_small_networks(kind, seed):
    """Tightness kept: under a cap of a few GB, small nets' optimised bounds are those without planning."""
    _, net = random_network(seed, kind, detach=True)
    lower, upper, C = random_region(net, seed, n=1, eps=0.15, rows=3)
    capped = AlphaDeepPoly(net, lower, upper)
    capped.max_memory = 4 << 30
    bounds = capped.optimize(C, iterations=10)
    assert capped.frozen == set()
    torch.testing.assert_close(bounds, Unplanned(net, lower, upper).optimize(C, iterations=10), rtol=0, atol=0)


def test_nodes_before_every_relu_are_not_reoptimised_and_the_bounds_stay():
    """The first convolution after the input's Linear has no slope to optimise: frozen, same bounds.

    To 1e-4: recomputing the node's rows (the unplanned run) may tighten its bounds by an ulp, and Adam moves a
    slope by its learning rate on a gradient of rounding noise as on any other."""
    net, lower, upper, C = _input_fed_conv_problem()
    planned, unplanned = AlphaDeepPoly(net, lower, upper), Unplanned(net, lower, upper)
    a, b = planned.optimize(C, iterations=5), unplanned.optimize(C, iterations=5)
    assert planned.frozen == {3}
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


class AllRows(AlphaDeepPoly):
    """Every neuron the interval bounds left unstable keeps its row in the optimisation."""

    def drop_stable_rows(self, nodes) -> None:
        pass


@pytest.mark.parametrize("kind", [*KINDS, *ACTIVATION_KINDS])
def test_dropping_the_rows_of_neurons_deeppoly_made_stable_keeps_the_bounds(kind):
    """In float64 the optimisation without the rows of neurons that DeepPoly's bounds made stable ends where the
    one with them does (their bounds are intersected in and stay stable): fewer rows, the same final bounds and
    intermediate bounds of the neurons still unstable (a stable neuron's relaxation is exact whatever they are)."""
    dropped = 0
    for seed in range(3):
        _, net = random_network(seed, kind, detach=True)
        net = net.to(dtype=torch.float64)
        lower, upper, C = (t.double() for t in random_region(net, seed, n=2, eps=0.15, rows=3))
        fewer, every = AlphaDeepPoly(net, lower, upper), AllRows(net, lower, upper)
        # to 1e-4: Adam moves a slope by its learning rate on a gradient of rounding noise as on any other
        torch.testing.assert_close(fewer.optimize(C, iterations=15), every.optimize(C, iterations=15),
                                   rtol=1e-4, atol=1e-4)
        for node, idx in every.refine_idx.items():
            loose = fewer.loose(node, *fewer.bounds[node])
            for a, b in zip(fewer.bounds[node], every.bounds[node]):
                torch.testing.assert_close(a[loose], b[loose], rtol=1e-4, atol=1e-4)
            dropped += idx.shape[1] - fewer.refine_idx[node].shape[1]
    assert dropped > 0


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "leakyrelu", "maxpool"])
def test_activation_parameters_tighten_the_bound(kind):
    """Optimising the activations' slopes as well beats optimising the ReLU slopes alone somewhere."""

    class ReluSlopesOnly(AlphaDeepPoly):
        def activation_params(self, start, node, A):
            return None

    gains = []
    for seed in range(3):
        _, net = random_network(seed, kind, detach=True)
        lower, upper, C = random_region(net, seed, n=2, eps=0.15, rows=3)
        both = AlphaDeepPoly(net, lower, upper).optimize(C, iterations=15)
        relu_only = ReluSlopesOnly(net, lower, upper).optimize(C, iterations=15)
        gains.append(float((both - relu_only).max()))
    assert max(gains) > 1e-3
