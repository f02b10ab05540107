"""Branch-and-bound pieces: split bounds with beta/gamma are sound on the split region; queue order."""

import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nncert.domains import decide
from nncert.domains.alpha import NeuronSlopes
from nncert.domains.bab import (
    BaBConfig,
    BranchAndBound,
    LayerConstraints,
    SplitDeepPoly,
    Subproblems,
    preactivation_bias,
    split_nodes,
)
from nncert.domains.from_torch import network_from_torch
from nncert.domains.milp import SplitLP
from nncert.domains.network import Conv2d, Linear
from nncert.domains.pool import Pool
from nncert.verifier.spec import robustness_spec
from tests.random_nets import input_fed_conv_network, random_network
from tests.soundness import concrete_minimum


def _split_region_points(net, lower, upper, split, n=20000, seed=0):
    """Random inputs whose pre-activations respect every split sign (s x >= 0)."""
    g = torch.Generator().manual_seed(seed)
    points = lower + (upper - lower) * torch.rand(n, *lower.shape[1:], generator=g)
    with torch.no_grad():
        values = net(points, return_all=True)
    keep = torch.ones(n, dtype=torch.bool)
    for relu, s in split.items():
        pre = values[net.nodes[relu].inputs[0]].flatten(1)
        keep &= ((pre * s.flatten(1).float()) >= 0).all(1)
    return points[keep]


def _box_and_rows(kind, seed, rows):
    """A random network, its generator, an input box of radius 0.2 and random rows C (1, rows, *out)."""
    _, net = random_network(seed, kind, detach=True)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, *net.input_shape, generator=g)
    return net, g, x - 0.2, x + 0.2, torch.randn(1, rows, *net.output_shape, generator=g)


@pytest.mark.parametrize("kind", ["fc", "conv", "residual"])
@pytest.mark.parametrize("seed", range(4))
def test_split_bound_with_any_multipliers_is_sound(kind, seed):
    net, g, lower, upper, C = _box_and_rows(kind, seed, rows=2)
    dp = SplitDeepPoly(net, lower, upper)
    dp.compute_intermediate_bounds()
    # split a few unstable neurons per layer the way a random point of the box activates them (so the
    # split region is not empty), clamping their bounds like the branching does
    with torch.no_grad():
        witness = net(lower + (upper - lower) * torch.rand(lower.shape, generator=g), return_all=True)
    known = {}
    for relu in net.relu_nodes:
        pre = net.nodes[relu].inputs[0]
        lo, hi = (t.flatten(1).clone() for t in dp.bounds[pre])
        unstable = torch.nonzero((lo[0] < 0) & (hi[0] > 0)).flatten()[:2]
        s = torch.zeros_like(lo, dtype=torch.int8)
        s[0, unstable] = torch.where(witness[pre].flatten(1)[0, unstable] < 0, -1, 1).to(torch.int8)
        lo = torch.where(s > 0, lo.clamp(min=0), lo)
        hi = torch.where(s < 0, hi.clamp(max=0), hi)
        shape = dp.bounds[pre][0].shape
        known[pre] = (lo.view(shape), hi.view(shape))
        dp.split[relu] = s.view(1, *net.shapes[relu])
        dp.beta[relu] = torch.rand(1, 2, *net.shapes[relu], generator=g) * (s != 0).view(1, 1, *net.shapes[relu])
        # a valid multi-neuron constraint: y_i - x_i >= 0 for the first neuron, written as x - y <= 0
        dp.constraints[relu] = LayerConstraints(torch.tensor([[0]]), torch.tensor([[1.0]]), torch.tensor([[-1.0]]),
                                                torch.tensor([0.0]))
        dp.gamma[relu] = torch.rand(1, 2, 1, generator=g)
    dp.compute_intermediate_bounds(known=known)
    dp.create_alpha = True
    dp.linear_lower(dp.output, C)
    for key in list(dp.alpha):
        dp.alpha[key] = torch.rand(dp.alpha[key].shape, generator=g)
    dp.create_alpha = False
    bound = dp.linear_lower(dp.output, C)
    points = _split_region_points(net, lower, upper, dp.split, seed=seed)
    assert len(points) > 0
    with torch.no_grad():
        values = torch.einsum("kj,pj->kp", C[0], net(points)).min(1).values
    assert (bound[0] <= values + 1e-5).all()


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
@pytest.mark.parametrize("seed", range(3))
def test_s_shaped_split_bound_with_any_multipliers_is_sound(kind, seed):
    """Sigmoid / Tanh neurons split at their split point (the side a random point of the box lies on), any
    slopes and any multipliers beta >= 0 of their input bounds: the bound holds on the split region."""
    net, g, lower, upper, C = _box_and_rows(kind, seed, rows=2)
    dp = SplitDeepPoly(net, lower, upper)
    dp.compute_intermediate_bounds()
    with torch.no_grad():
        witness = net(lower + (upper - lower) * torch.rand(lower.shape, generator=g), return_all=True)
    known, curves = {}, [node for node in split_nodes(net) if node not in net.relu_nodes]
    for node in curves:
        pre, op = net.nodes[node].inputs[0], net.nodes[node].op
        lo, hi = (t.clone() for t in dp.bounds[pre])
        point, value = op.split_point(lo, hi)[0, :3], witness[pre][0, :3]
        lo[0, :3] = torch.where(value >= point, point, lo[0, :3])
        hi[0, :3] = torch.where(value < point, point, hi[0, :3])
        known[pre] = (lo, hi)
    dp.compute_intermediate_bounds(known=known)
    dp.bounded = set(curves)
    dp.create_alpha = True
    dp.linear_lower(dp.output, C)
    for key in list(dp.alpha):
        dp.alpha[key] = torch.rand(dp.alpha[key].shape, generator=g)
    for node in curves:
        dp.beta[node] = torch.rand(dp.beta[node].shape, generator=g) * 3
    dp.create_alpha = False
    bound = dp.linear_lower(dp.output, C)
    points = lower + (upper - lower) * torch.rand(20000, *lower.shape[1:], generator=g)
    with torch.no_grad():
        values = net(points, return_all=True)
    inside = torch.ones(len(points), dtype=torch.bool)
    for pre, (lo, hi) in known.items():
        inside &= ((values[pre] >= lo) & (values[pre] <= hi)).all(1)
    assert int(inside.sum()) > 0
    y = torch.einsum("kj,pj->kp", C[0], values[-1][inside]).min(1).values
    assert (bound[0] <= y + 1e-5).all()
    assert (bound[0] > -1e4).all()  # the multipliers did not make the bound meaningless


def _empty_region_search(config):
    """z = (x - 0.1, -x - 0.1) on x in [-1, 1], y = z_1 + z_2, and the subproblem with both neurons split
    active: no x has both, the region is empty. Returns the net, the search for y <= 0 and the subproblem."""
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[0].bias.fill_(-0.1)
        model[2].weight.fill_(1.0)
        model[2].bias.zero_()
    net = network_from_torch(model.requires_grad_(False), (1,))
    dp = SplitDeepPoly(net, -torch.ones(1, 1), torch.ones(1, 1))
    dp.compute_intermediate_bounds()
    relu = net.relu_nodes[0]
    search = BranchAndBound(dp, torch.ones(1, 1, 1), torch.zeros(1, 1), config,
                            lambda xs: torch.zeros(len(xs), dtype=torch.bool), deadline=float("inf"))
    lo, hi = dp.bounds[1]
    sub = Subproblems(bounds={1: (lo.clamp(min=0.0), hi)}, split={relu: torch.ones(1, 2, dtype=torch.int8)},
                      alpha={}, beta={relu: torch.zeros(1, 1, 2)}, gamma={}, lower=torch.full((1, 1), -torch.inf),
                      depth=torch.full((1,), 2), spec=torch.zeros(1, dtype=torch.long))
    return net, search, sub


@pytest.mark.parametrize("keep_best", [False, True])
def test_children_carry_the_optimisation_on_across_generations(keep_best, monkeypatch):
    """z = (x - 0.1, -x - 0.1), both split active: no x has both, the region is empty and any bound holds
    there. The dual bound -0.2 + 0.1 (b_1 + b_2) - |b_1 - b_2| stays below the box bound 0 until b > 1: a
    10-step run at 0.05 from zero never beats where it started, so children that restarted from the best
    multipliers would stay there; children that carry on from the last step prove it within a few."""
    net, search, sub = _empty_region_search(BaBConfig(iterations=10, lr_beta=0.05))
    if keep_best:  # what children inherited before: the best multipliers
        optimize = SplitDeepPoly.optimize
        monkeypatch.setattr(SplitDeepPoly, "optimize",
                            lambda self, *a, **kw: optimize(self, *a, **{**kw, "keep_best": True}))
    margins = []
    for _ in range(5):  # generations: each child starts from what its parent passes on
        sub, feasible, _ = search.bound(sub, len(net.nodes), search.config.iterations)
        margins.append(sub.lower.item())
    assert feasible.all() and margins[0] == 0.0  # the box bound; the first run does not beat it
    assert (margins[-1] > 0.0) != keep_best


def _lp_inputs(sub, i, search):
    split = {search.pre[r]: t[i].flatten().numpy() for r, t in sub.split.items()}
    bounds = {node: (lo[i], hi[i]) for node, (lo, hi) in sub.bounds.items()}
    return split, bounds


@pytest.mark.parametrize("kind", ["fc", "conv", "residual"])
@pytest.mark.parametrize("seed", range(3))
def test_split_lp_bounds_hold_on_children(kind, seed):
    """The LP of the encoding with a child's splits fixed never exceeds the clause margin at a point of the
    child's region, and calls a region empty only where no sampled point lies."""
    net, lower, upper, search, root = _search_at_root(kind, seed, rows=1, config=BaBConfig(iterations=2))
    lp = SplitLP(net, lower[0], upper[0], root.bounds, search.C[0], search.d[0])
    checked = 0
    for sub in _rounds(search, root, rounds=3):
        for i in range(len(sub)):
            bound = lp.margin(*_lp_inputs(sub, i, search), time_limit=60.0)
            points = _split_region_points(net, lower, upper, {r: t[i:i + 1] for r, t in sub.split.items()},
                                          n=4000, seed=i)
            if bound == float("inf"):
                assert len(points) == 0
            if len(points) == 0:
                continue
            with torch.no_grad():
                margin = (net(points).reshape(len(points), -1) @ search.C[0].reshape(1, -1).T - search.d[0]).amax(1)
            assert (margin >= bound - 1e-5).all()
            checked += len(points)
    assert checked > 0


def test_split_lp_finds_the_empty_region_the_dual_bound_misses():
    """z = (x - 0.1, -x - 0.1), both split active: no x has both. The LP says so at once, and the search prunes
    the child in its first generation, where the back-substituted bound stays at the box bound 0."""
    net, search, sub = _empty_region_search(BaBConfig(iterations=1, lp_checks=4))
    sub, feasible, _ = search.bound(sub, len(net.nodes), search.config.iterations)
    margin = (sub.lower - search.d).max(1).values
    assert feasible.all() and margin.item() == 0.0
    assert bool(decide.proved(search.lp_check(sub, feasible, margin, inherited=torch.zeros(1)))[0])
    assert search.stats["lp_pruned"] == 1
    off = BranchAndBound(search.root, search.C, search.d, BaBConfig(lp_checks=0), search.is_counterexample,
                         float("inf"))
    assert off.lp_check(sub, feasible, margin, inherited=torch.zeros(1)).item() == 0.0


def test_neuron_slopes_are_looked_up_by_neuron():
    slopes = torch.arange(4.0).reshape(4, 1) * torch.ones(4, 3)  # rows: lower of neurons 5 and 2, then upper
    lookup = NeuronSlopes(slopes, torch.tensor([-1, -1, 1, -1, -1, 0]))
    picked, known = lookup.pick(torch.tensor([[2, 5], [5, 4]]))
    assert picked[:, :, 0].tolist() == [[1.0, 0.0, 3.0, 2.0], [0.0, 0.0, 2.0, 2.0]]
    assert known.flatten(1).tolist() == [[True, True, True, True], [True, False, True, False]]


def _search_at_root(kind, seed, rows, config):
    """A random net, its input box, a search for ``rows`` random rows (C y <= 20: never excluded) and its root."""
    net, _, lower, upper, C = _box_and_rows(kind, seed, rows)
    dp = SplitDeepPoly(net, lower, upper)
    dp.optimize(C, iterations=5)
    search = BranchAndBound(dp, C, torch.full((1, rows), 20.0), config,
                            lambda xs: torch.zeros(len(xs), dtype=torch.bool), deadline=float("inf"))
    params = dp.final_parameters()
    pre = {r: net.nodes[r].inputs[0] for r in split_nodes(net)}
    root = Subproblems(bounds={pre[r]: dp.bounds[pre[r]] for r in split_nodes(net)},
                       split={r: torch.zeros(1, *net.shapes[r], dtype=torch.int8) for r in net.relu_nodes},
                       alpha={node: p for (kind, node), p in params.items() if kind == "alpha"},
                       beta={r: torch.zeros(1, rows, *net.shapes[r]) for r in net.relu_nodes}, gamma={},
                       lower=torch.full((1, rows), -torch.inf), depth=torch.zeros(1, dtype=torch.long),
                       spec=torch.zeros(1, dtype=torch.long))
    root, _, _ = search.bound(root, refine_from=len(net.nodes), iterations=0)
    return net, lower, upper, search, root


def _rounds(search, sub, rounds):
    """The feasible children after each of ``rounds`` rounds of splitting every subproblem that can be split."""
    for _ in range(rounds):
        sub = sub.select(sub.branchable())
        if len(sub) == 0:
            return
        sub, refine_from, _ = search.branch(sub)
        sub, feasible, _ = search.bound(sub, refine_from, iterations=2)
        sub = sub.select(feasible)
        yield sub


@pytest.mark.parametrize("kind", ["fc", "conv", "residual"])
@pytest.mark.parametrize("seed", range(3))
def test_children_bounds_with_the_roots_slopes_are_sound(kind, seed):
    """Children's intermediate bounds, recomputed with the root's optimised slopes, hold on their regions."""
    net, lower, upper, search, root = _search_at_root(kind, seed, rows=1, config=BaBConfig(iterations=2))
    assert search.root_slopes
    checked = 0
    for sub in _rounds(search, root, rounds=3):
        for i in range(len(sub)):
            points = _split_region_points(net, lower, upper, {r: s[i:i + 1] for r, s in sub.split.items()},
                                          n=4000, seed=i)
            checked += len(points)
            with torch.no_grad():
                values = net(points, return_all=True)
            for node, (lo, hi) in sub.bounds.items():
                assert (values[node] >= lo[i] - 1e-5).all() and (values[node] <= hi[i] + 1e-5).all()
    assert checked > 0


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
@pytest.mark.parametrize("seed", range(2))
def test_children_hold_their_parents_points_when_s_shaped_neurons_split(kind, seed):
    """Every sampled point of a parent's region lies in one of its children (by the split neuron's value), and
    that child's bounds, after bounding, contain the point's node values and its row bounds lie below the
    point's C y; a child found empty holds no point. On Sigmoid / Tanh / ReLU nets, where the branching picks
    S-shaped neurons (and ReLUs, on three of the four)."""
    net, lower, upper, search, root = _search_at_root(kind, seed, rows=2, config=BaBConfig(iterations=2))
    points = lower + (upper - lower) * torch.rand(3000, *lower.shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        values = net(points, return_all=True)
    rows = torch.einsum("kj,pj->pk", search.C[0], values[-1])  # (P, K)
    sub, owner, kinds = root, torch.zeros(len(points), dtype=torch.long), set()
    for _ in range(4):
        keep = sub.branchable()
        points_kept = keep[owner]
        sub, owner = sub.select(keep), (keep.cumsum(0) - 1)[owner[points_kept]]
        values, rows = [v[points_kept] for v in values], rows[points_kept]
        if len(sub) == 0:
            break
        choice, _ = search.decide(sub)
        children, refine_from = search.split(sub, choice)
        layer, index = search.locate(sub, choice)
        kinds |= {type(net.nodes[search.nodes[li]].op).__name__ for li in layer.tolist()}
        pre = torch.tensor([search.pre[search.nodes[li]] for li in layer.tolist()])
        split_value = torch.stack([values[int(pre[i])].flatten(1)[:, int(index[i])] for i in range(len(sub))], 1)
        value = split_value.gather(1, owner[:, None])[:, 0]  # each point's value of its parent's split neuron
        first_hi = torch.stack([children.bounds[int(pre[i])][1].flatten(1)[i, index[i]] for i in range(len(sub))])
        second_lo = torch.stack([children.bounds[int(pre[i])][0].flatten(1)[len(sub) + i, index[i]]
                                 for i in range(len(sub))])
        in_first, in_second = value <= first_hi[owner] + 1e-6, value >= second_lo[owner] - 1e-6
        assert (in_first | in_second).all()
        owner = torch.where(in_first, owner, owner + len(sub))
        sub, feasible, _ = search.bound(children, refine_from, iterations=2)
        assert feasible[owner].all()
        for node, (lo, hi) in sub.bounds.items():
            v = values[node].flatten(1)
            assert (v >= lo.flatten(1)[owner] - 1e-5).all() and (v <= hi.flatten(1)[owner] + 1e-5).all(), node
        assert (sub.lower[owner] <= rows + 1e-5).all()
    assert kind.capitalize() in kinds and kinds <= {"ReLU", kind.capitalize()}


@pytest.mark.parametrize("kind", ["fc", "conv", "residual"])
@pytest.mark.parametrize("seed", range(2))
def test_refining_each_child_from_its_split_layer_loses_nothing(kind, seed):
    """A child's bounds before its split layer are its ancestors' (refined when they last changed), so refining
    each group of children from its own split layer gives the bounds that refining all from the first does."""
    net, _, _, search, root = _search_at_root(kind, seed, rows=1, config=BaBConfig(iterations=2))
    root, _, _ = search.bound(root, refine_from=1, iterations=0)  # the root's bounds: a fixed point of refining
    mixed = 0
    for sub in _rounds(search, root, rounds=2):
        sub = sub.select(sub.branchable())
        # the subproblems split in turn in every layer with a neuron left to split
        offsets = torch.tensor([0, *[sub.score[r].shape[1] for r in search.relus]]).cumsum(0)
        choice = []
        for i in range(len(sub)):
            layers = [li for li, r in enumerate(search.relus) if sub.score[r][i].amax() >= 0]
            li = layers[i % len(layers)]
            choice.append(offsets[li] + sub.score[search.relus[li]][i].argmax())
        children, refine_from = search.split(sub, torch.stack(choice))
        mixed += len(refine_from.unique()) > 1
        for i, start in enumerate(refine_from.tolist()):  # the one pre-activation the split changed is start - 1
            changed = [node for node, (lo, hi) in children.bounds.items()
                       if not (torch.equal(lo[i], sub.bounds[node][0][i % len(sub)])
                               and torch.equal(hi[i], sub.bounds[node][1][i % len(sub)]))]
            assert changed == [start - 1]
        grouped = search.refined_bounds(children, refine_from)
        from_first = search.refined_bounds(children, torch.ones_like(refine_from))
        for node in grouped:
            torch.testing.assert_close(grouped[node], from_first[node], atol=1e-5, rtol=1e-5)
    assert mixed > 0


@pytest.mark.parametrize("kind", ["fc", "conv", "residual"])
def test_children_the_branching_trial_excludes_hold_no_violation(kind):
    """With d between the root's bound and the sampled minimum, the split's trial bounds exclude some children
    (or find them empty) before they are bounded; no sampled point of such a child's region violates the clause."""
    net, lower, upper, search, root = _search_at_root(kind, 0, rows=1, config=BaBConfig(iterations=2))
    search.d = (root.lower + concrete_minimum(net, lower, upper, search.C)) / 2
    sub, excluded = root, 0
    for _ in range(4):
        sub = sub.select(sub.branchable())
        if len(sub) == 0:
            break
        children, refine_from, trial = search.branch(sub)
        for i in torch.nonzero(trial > 0).flatten().tolist():
            points = _split_region_points(net, lower, upper, {r: s[i:i + 1] for r, s in children.split.items()},
                                          n=4000, seed=i)
            with torch.no_grad():
                assert ((net(points) @ search.C[0].T - search.d[0]).amax(1) > 0).all()
            excluded += 1
        sub, feasible, _ = search.bound(children.select(trial <= 0), refine_from[trial <= 0], iterations=2)
        sub = sub.select(feasible & (search.margin(sub) <= 0))
    assert excluded > 0


def _subproblems(lower_values, depths):
    n = len(lower_values)
    return Subproblems(bounds={1: (torch.zeros(n, 3), torch.ones(n, 3))}, split={2: torch.zeros(n, 3)},
                       alpha={2: torch.zeros(n, 1, 3)}, beta={2: torch.zeros(n, 1, 3)}, gamma={},
                       lower=torch.tensor(lower_values).reshape(n, 1), depth=torch.tensor(depths),
                       spec=torch.zeros(n, dtype=torch.long))


def test_pool_pops_lowest_bound_first_and_deepest_when_asked():
    first = _subproblems([-1.0, -5.0, -3.0], [1, 2, 3])
    pool = Pool(first, lambda sub: sub.lower[:, 0])
    pool.push(first)
    pool.push(_subproblems([-4.0, -0.5], [7, 4]))
    assert len(pool) == 5
    assert sorted(pool.pop(2, depth_first=False).lower.flatten().tolist()) == [-5.0, -4.0]
    assert pool.pop(1, depth_first=True).depth.tolist() == [4]
    assert sorted(pool.pop(5, depth_first=False).lower.flatten().tolist()) == [-3.0, -1.0]
    assert len(pool) == 0
    pool.push(_subproblems([-2.0], [0]))  # reuses freed slots
    assert len(pool) == 1 and pool.pop(1, depth_first=False).lower.item() == -2.0


def test_layer_constraints_spread_matches_dense_sum():
    cons = LayerConstraints(torch.tensor([[0, 2], [1, 2]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
                            torch.tensor([[-1.0, 0.5], [0.0, -2.0]]), torch.tensor([0.1, 0.2]))
    gamma = torch.tensor([[[1.0, 10.0]]])
    assert torch.allclose(cons.spread(gamma, "a", (3,)), torch.tensor([[[1.0, 30.0, 42.0]]]))
    assert torch.allclose(cons.per_neuron(gamma, (3,)), torch.tensor([[[2.0, 30.0, 62.5]]]))


def test_row_bytes_sums_one_row_of_every_tensor():
    sub = _subproblems([-1.0, -2.0], [0, 1])
    # bounds 2 x 3 floats, split 3, alpha 3, beta 3 floats, lower 1 float, depth and spec 1 long each
    assert sub.row_bytes() == (6 + 3 + 3 + 3 + 1) * 4 + 2 * 8


def test_pool_never_grows_beyond_its_capacity():
    like = _subproblems([0.0], [0])
    pool = Pool(like, lambda sub: sub.lower[:, 0], max_memory=5 * like.row_bytes() + like.row_bytes() // 2)
    pool.push(_subproblems([-1.0, -2.0, -3.0], [0, 0, 0]))
    pool.push(_subproblems([-4.0, -5.0], [1, 1]))
    assert len(pool) == 5 and pool.room() == 0 and len(pool.valid) == 5  # storage capped, not doubled to 6
    with pytest.raises(ValueError, match="no room"):
        pool.push(_subproblems([-6.0], [2]))
    pool.pop(2, depth_first=True)
    pool.push(_subproblems([-7.0, -8.0], [2, 2]))
    assert len(pool) == 5 and len(pool.valid) == 5


@pytest.mark.parametrize("kind", ["fc", "conv", "residual"])
def test_preactivation_bias_is_the_layers_bias(kind):
    """BaBSR's bias term: a Linear's bias, a Conv2d's per-channel bias over every pixel, 0 for other ops."""
    net, *_ = _box_and_rows(kind, 0, rows=1)
    checked = 0
    for r in net.relu_nodes:
        node = net.nodes[r].inputs[0]
        op = net.nodes[node].op
        bias = preactivation_bias(net, node, torch.zeros(1))
        assert bias.shape == net.shapes[node]
        if isinstance(op, Linear):
            assert torch.equal(bias, op.bias)
            checked += 1
        elif isinstance(op, Conv2d):
            assert torch.equal(bias, op.bias[:, None, None].expand(net.shapes[node]))
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("batch_size", [1, 64], ids=["trials-in-chunks", "trials-at-once"])
@pytest.mark.parametrize("kind", ["fc", "conv", "tanh"])
def test_filtered_smart_branching_takes_the_candidate_with_the_best_child(kind, batch_size):
    """With k candidates from each score, the split chosen is the one whose better child has the best quick
    bound, judged candidate by candidate here."""
    k = 3
    config = BaBConfig(iterations=2, fsb_candidates=k, batch_size=batch_size)
    *_, search, root = _search_at_root(kind, 1, rows=2, config=config)
    *_, sub = _rounds(search, root, rounds=2)
    sub = sub.select(sub.branchable())
    assert len(sub) > 0
    choice, trial = search.decide(sub)
    assert torch.equal(trial, search.quick_margin(search.children(sub, choice)))  # the chosen children's margins
    primary = torch.cat([sub.score[r] for r in search.nodes], 1)
    backup = torch.cat([sub.backup[r] for r in search.nodes], 1)
    for i in range(len(sub)):
        one = sub.select(torch.tensor([i]))
        candidates = {c for c in primary[i].topk(k).indices.tolist() + backup[i].topk(k).indices.tolist()
                      if primary[i, c] >= 0}
        better_child = {c: float(search.quick_margin(search.children(one, torch.tensor([c]))).max())
                        for c in candidates}
        assert int(choice[i]) in candidates
        assert better_child[int(choice[i])] >= max(better_child.values()) - 1e-6


def test_bounds_crossing_only_by_rounding_or_nan_do_not_make_a_region_empty():
    """A child whose pre-activation bounds cross by one ulp, or are NaN, stays open; crossing by more is empty."""
    _, search, _ = _empty_region_search(BaBConfig())
    node = next(iter(search.pre.values()))
    hi = torch.tensor([[0.3, -0.2], [0.3, -0.2], [0.3, -0.2]])
    lo = torch.stack([torch.nextafter(hi[0], torch.full_like(hi[0], torch.inf)),
                      torch.tensor([float("nan"), -0.3]), hi[2] + torch.tensor([0.0, 0.01])])
    dp = SimpleNamespace(lower=torch.zeros(3, 1), bounds={node: (lo, hi)})
    assert search.feasible(dp).tolist() == [True, True, False]


def test_a_nan_bound_keeps_the_subproblem_open():
    """y = relu(x - 0.1) + relu(-x - 0.1) <= 0 holds near x = 0: a root whose bound is NaN must stay open (the
    search then ends undecided), where dropping it as if proven would certify a false property."""
    net, search, sub = _empty_region_search(BaBConfig(iterations=0))
    relu = net.relu_nodes[0]
    root = Subproblems(bounds={1: search.root.bounds[1]}, split={relu: torch.zeros(1, 2, dtype=torch.int8)},
                       alpha={}, beta={relu: torch.zeros(1, 1, 2)}, gamma={}, lower=torch.full((1, 1), torch.nan),
                       depth=torch.zeros(1, dtype=torch.long), spec=torch.zeros(1, dtype=torch.long))
    root, feasible, _ = search.bound(root, len(net.nodes), 0)
    assert feasible.all() and torch.isnan(root.lower).all()
    assert not bool(decide.proved(search.margin(root))[0])
    search.deadline = time.monotonic() + 10.0
    assert search.run(root).status != "certified"


def test_a_batch_holds_only_as_many_subproblems_as_fit_the_memory_cap():
    net = input_fed_conv_network(0, side=16)
    x = torch.rand(16, generator=torch.Generator().manual_seed(0))
    spec = robustness_spec(int(net(x[None]).argmax()), 10)
    root = SplitDeepPoly(net, (x - 0.05)[None], (x + 0.05)[None])
    root.bound(spec.C[None])
    per_child = root.optimization_bytes(root.output, spec.C.shape[0])
    search = BranchAndBound(root, spec.C[None], spec.d[None], BaBConfig(batch_memory=10 * per_child), lambda xs: xs,
                            time.monotonic() + 1)
    assert search.batch_size() == 5
    search.config = BaBConfig()
    assert search.batch_size() == BaBConfig.batch_size
