"""Intermediate bounds by a branch-and-bound per neuron: tighter than the root's, never past the exact range."""

import math

import pytest
import torch

from nncert.domains.bab import BranchAndBound, SplitDeepPoly, Subproblems
from nncert.domains.intermediate_bab import (
    IntermediateBaBConfig,
    lowest_per_spec,
    most_promising,
    priority,
    tighten,
    tighten_node,
)
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


def _negative_bounds(C):
    """The objective of the priorities in these tests: the sum of the final bound's negative rows."""
    return lambda dp: dp.linear_lower(dp.output, C).clamp(max=0).sum()


@pytest.mark.parametrize("kind", ["fc", "residual"])
def test_priority_is_the_gain_of_tightening_a_bound_per_share_of_its_room(kind):
    """Moving the top-priority bound of every node by a small share t of its room (towards 0) raises the
    objective, the later nodes' bounds recomputed from it, by t x its priority (the multipliers fixed); stable
    neurons have none."""
    net, dp, C = _root(kind, 0)
    objective = _negative_bounds(C)
    t = 1e-3

    def objective_from(node, bounds):  # the later nodes' bounds recomputed from ``bounds`` of node
        moved = SplitDeepPoly(net, dp.lower, dp.upper)
        moved.alpha, moved.refine_idx = dp.alpha, dp.refine_idx
        with torch.no_grad():
            moved.compute_intermediate_bounds(known={**{n: b for n, b in dp.bounds.items() if n < node},
                                                     node: bounds}, refine_from=node + 1)
            return float(objective(moved))

    moved_any = False
    for node in sorted(dp.refine_idx):
        score = priority(dp, node, objective)
        idx = dp.refine_idx[node][0]
        lo, hi = (b.flatten()[idx] for b in dp.bounds[node])
        assert (score[torch.cat([(lo >= 0) | (hi <= 0)] * 2)] == 0).all()
        row = int(score.argmax())
        if score[row] <= 0:
            continue
        new_lo, new_hi = (b.clone().flatten() for b in dp.bounds[node])
        k = len(idx)
        if row < k:
            new_lo[idx[row]] += t * -new_lo[idx[row]]
        else:
            new_hi[idx[row - k]] -= t * new_hi[idx[row - k]]
        gain = objective_from(node, (new_lo.view_as(dp.bounds[node][0]),
                                     new_hi.view_as(dp.bounds[node][1])))
        gain -= objective_from(node, dp.bounds[node])
        assert gain == pytest.approx(t * float(score[row]), rel=0.05)
        moved_any = True
    assert moved_any


def test_most_promising_takes_the_highest_scores_up_to_a_share_of_the_total():
    score = torch.tensor([0.0, 5.0, 3.0, 2.0, 0.0])
    assert most_promising(score, 0.6).tolist() == [1, 2]  # 5 < 6 <= 5 + 3
    assert most_promising(score, 0.5).tolist() == [1]
    assert sorted(most_promising(score, 1.0).tolist()) == [1, 2, 3]  # never the zeros
    assert most_promising(torch.zeros(3), 0.9).tolist() == []


@pytest.mark.parametrize("kind", ["fc", "residual"])
def test_searches_of_chosen_rows_move_only_those_bounds(kind):
    """tighten_node with rows: the chosen bounds tighten as without rows, the others stay."""
    net, dp, C = _root(kind, 1)
    config = IntermediateBaBConfig(rounds=3, width=4)
    for node in sorted(dp.refine_idx):
        idx = dp.refine_idx[node][0]
        lo, hi = (t.flatten() for t in dp.bounds[node])
        all_lo, all_hi = (t.flatten() for t in tighten_node(dp, node, config, float("inf")))
        unstable = torch.nonzero((lo[idx] < 0) & (hi[idx] > 0)).flatten()
        rows = torch.cat([unstable[::2], unstable[1::2] + len(idx)])  # every other neuron's lower bound, and the
        new_lo, new_hi = (t.flatten() for t in tighten_node(dp, node, config, float("inf"), rows))  # others' upper
        chosen_lo, chosen_hi = idx[unstable[::2]], idx[unstable[1::2]]
        # as tight as there; tighter only where the full run stopped a search its neuron's other one proved stable
        assert (new_lo[chosen_lo] >= all_lo[chosen_lo] - 1e-5).all()
        assert (new_hi[chosen_hi] <= all_hi[chosen_hi] + 1e-5).all()
        same_lo, same_hi = all_hi[chosen_lo] >= 0, all_lo[chosen_hi] <= 0  # the other search proved nothing
        assert torch.allclose(new_lo[chosen_lo][same_lo], all_lo[chosen_lo][same_lo], atol=1e-5)
        assert torch.allclose(new_hi[chosen_hi][same_hi], all_hi[chosen_hi][same_hi], atol=1e-5)
        untouched_lo = torch.ones_like(lo, dtype=torch.bool)
        untouched_lo[chosen_lo] = False
        untouched_hi = torch.ones_like(hi, dtype=torch.bool)
        untouched_hi[chosen_hi] = False
        assert torch.equal(new_lo[untouched_lo], lo[untouched_lo])
        assert torch.equal(new_hi[untouched_hi], hi[untouched_hi])


# seeds whose root optimisation makes some of the neurons DeepPoly left unstable stable
@pytest.mark.parametrize("kind, seed", [("fc", 1), ("residual", 2)])
def test_searches_stop_once_their_neuron_is_proved_stable(kind, seed, monkeypatch):
    """Neither search of a neuron proved stable branches: its relaxation is exact whatever its bounds. Here the
    neurons the root already proves stable, searched on both sides beside unstable ones."""
    net, dp, C = _root(kind, seed)
    branched = []
    branch = BranchAndBound.branch

    def spy(search, leaves):
        branched.append(leaves.spec.clone())  # which of the rows each branched leaf bounds
        return branch(search, leaves)

    monkeypatch.setattr(BranchAndBound, "branch", spy)
    config = IntermediateBaBConfig(rounds=3, width=4)
    checked = 0
    for node in sorted(dp.refine_idx):
        idx = dp.refine_idx[node][0]
        lo, hi = (t.flatten()[idx] for t in dp.bounds[node])
        stable = (lo > 1e-4) | (hi < -1e-4)
        if stable.all() or not stable.any():
            continue
        rows = torch.arange(2 * len(idx))
        branched.clear()
        tighten_node(dp, node, config, float("inf"), rows)
        searched = rows[torch.cat(branched)] % len(idx)
        assert len(searched) > 0
        assert not stable[searched].any()
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("kind", ["conv", "residual"])  # two refined nodes (fc: one)
def test_gains_are_the_shares_of_the_objective_each_node_closed(kind):
    """With an objective, each searched node's gain is the share of the objective's distance to 0 its searches
    closed: chained over the nodes they give the objective's value after all of them. A skipped node is not
    searched: the first node's bounds stay exactly as they were."""
    net, dp, C = _root(kind, 0)

    def objective(dp):
        return dp.linear_lower(dp.output, C).clamp(max=0).sum()

    with torch.no_grad():
        before = float(objective(dp))
    nodes = sorted(dp.refine_idx)
    first = tuple(t.clone() for t in dp.bounds[nodes[0]])
    gains = tighten(dp, IntermediateBaBConfig(rounds=3, width=4), float("inf"), objective, skip=nodes[:1])
    with torch.no_grad():
        after = float(objective(dp))
    assert before < after < 0
    assert sorted(gains) == nodes[1:]
    assert -after == pytest.approx(-before * math.prod(1 - g for g in gains.values()), rel=1e-4)
    assert all(torch.equal(t, t0) for t, t0 in zip(dp.bounds[nodes[0]], first))
