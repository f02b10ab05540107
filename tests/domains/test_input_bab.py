"""Input-splitting branch-and-bound: sound sub-box bounds, verdicts equal to exact MILP, beyond DeepPoly."""

import time

import pytest
import torch

from nncert.domains.deeppoly import DeepPoly
from nncert.domains.from_torch import network_from_torch
from nncert.domains.input_bab import Boxes, InputBaBConfig, InputBranchAndBound, clause_margins
from nncert.domains.milp import milp_verify
from nncert.domains.mnbab import MNBaBConfig, mnbab_verify, splits_input
from nncert.verifier.spec import OutputSpec, robustness_spec
from tests.paths import acasxu_property, reference_result
from tests.random_nets import fc_model, random_network
from tests.soundness import concrete_minimum

EPSILONS = [0.05, 0.15, 0.3, 0.5]


def _net(kind: str, seed: int):
    """Low-dimensional nets: the 4-input fc and residual nets, and 2- and 3-input fc nets."""
    if kind in ("fc", "residual"):
        return random_network(seed, kind, detach=True)[1]
    n_in = int(kind.removeprefix("fc"))
    return network_from_torch(fc_model(seed, widths=(10, 10), n_in=n_in), (n_in,)).detach()


def _properties(net, seed):
    """Around one random point: robustness at several radii, and disjunctions of two 2-row clauses."""
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(*net.input_shape, generator=g)
    y = net(x[None])[0]
    props = [(x - eps, x + eps, robustness_spec(int(y.argmax()), 3)) for eps in EPSILONS]
    # unsafe iff (y_0 - y_1 <= t_0 and y_0 - y_2 <= t_1) or (y_1 - y_2 <= t_2 and y_1 <= t_3), thresholds t
    # placed relative to the values at x (about a third of these are falsified)
    C = torch.tensor([[1.0, -1, 0], [1, 0, -1], [0, 1, -1], [0, 1, 0]])
    clause = torch.tensor([0, 0, 1, 1])
    for eps, offset in ((0.1, [-0.3, -0.3, -0.2, 0.1]), (0.15, [-0.6, -0.6, -0.5, 0.0])):
        props.append((x - eps, x + eps, OutputSpec(C, C @ y + torch.tensor(offset), clause)))
    return props


def _is_counterexample(net, spec):
    return lambda xs: spec.is_counterexample(net(xs).flatten(1))


def _search(net, lower, upper, spec, config=None, timeout=60.0):
    return InputBranchAndBound(net, lower[None], upper[None], spec.C[None], spec.d[None], spec.clause,
                               config or InputBaBConfig(), _is_counterexample(net, spec), time.monotonic() + timeout)


def _check_verdict(net, lower, upper, spec, result):
    """Decided, equal to the exact MILP verdict, and a counterexample that a forward pass confirms."""
    exact = milp_verify(net, lower, upper, spec.C, spec.d, spec.clause)
    assert result.status in ("certified", "falsified"), result.stats
    assert exact.status in ("certified", "falsified")
    assert result.status == exact.status, result.stats
    if result.status == "falsified":
        x = result.counterexample
        assert x.shape == lower.shape and bool(((x >= lower) & (x <= upper)).all())
        assert bool(_is_counterexample(net, spec)(x[None])[0])


@pytest.mark.parametrize("kind", ["fc2", "fc3", "fc", "residual"])
def test_agrees_with_exact_milp_and_decides_everything(kind):
    """Soundness and completeness on tiny nets (no timeout): certified <=> MILP certified."""
    for seed in range(3):
        net = _net(kind, seed)
        for lower, upper, spec in _properties(net, seed):
            _check_verdict(net, lower, upper, spec, _search(net, lower, upper, spec).run())


@pytest.mark.parametrize("config", [InputBaBConfig(branching="width", order="bound"),
                                    InputBaBConfig(batch_size=3, max_queue=4, alpha_iterations=3)],
                         ids=["width-bound-order", "depth-first-alpha"])
def test_variants_reach_the_same_verdicts(config):
    """Branching by width, bound order, tiny batches with a full queue (depth-first) and alpha steps."""
    for seed in range(2):
        net = _net("fc", 10 + seed)
        for lower, upper, spec in _properties(net, 10 + seed):
            _check_verdict(net, lower, upper, spec, _search(net, lower, upper, spec, config).run())


@pytest.mark.parametrize("kind", ["fc3", "residual"])
def test_sub_box_bounds_are_sound(kind):
    """Every sub-box's row bounds lie below concrete values (samples, corners, PGD) of that sub-box."""
    net = _net(kind, 3)
    lower, upper, spec = _properties(net, 3)[-1]
    search = _search(net, lower, upper, spec)
    g = torch.Generator().manual_seed(0)
    lo = lower + (upper - lower) * torch.rand(6, *lower.shape, generator=g) * 0.7
    hi = lo + (upper - lower) * torch.rand(6, *lower.shape, generator=g) * 0.3
    boxes = Boxes(lo, hi, torch.full((6, len(spec.d)), -torch.inf), torch.zeros(6, dtype=torch.long), torch.zeros(6))
    with torch.no_grad():
        bounded = search.bound(boxes)
    C = spec.C.expand(6, -1, -1)
    assert (bounded.lower <= concrete_minimum(net, lo, hi, C) + 1e-5).all()
    # the minimisers are corners of their own sub-box
    corners = bounded.candidates
    assert bool(((corners == lo[:, None]) | (corners == hi[:, None])).all())


def test_split_halves_the_chosen_dimension():
    lo, hi = torch.zeros(2, 3), torch.tensor([[1.0, 2, 4], [8, 1, 1]])
    boxes = Boxes(lo, hi, torch.zeros(2, 1), torch.tensor([0, 5]), torch.zeros(2))
    children = InputBranchAndBound.split(boxes, torch.tensor([2, 0]))
    assert torch.equal(children.lo, torch.tensor([[0.0, 0, 0], [0, 0, 0], [0, 0, 2], [4, 0, 0]]))
    assert torch.equal(children.hi, torch.tensor([[1.0, 2, 2], [4, 1, 1], [1, 2, 4], [8, 1, 1]]))
    assert children.depth.tolist() == [1, 6, 1, 6]


def test_split_children_cover_the_parent_exactly():
    """Both children share the split point as one float: their union is the parent, with no gap from rounding,
    also for bounds whose midpoint is not representable (odd last bits, huge magnitudes, subnormal widths)."""
    g = torch.Generator().manual_seed(0)
    lo = torch.cat([torch.rand(50, 5, generator=g) * 2 - 1,
                    torch.tensor([[0.1, -3e38, 1e-40, 0.3, 1.0], [-1.0, 1e30, 0.0, -0.7, 2.0**-20]])])
    hi = lo + torch.cat([torch.rand(50, 5, generator=g),
                         torch.tensor([[0.2, 6e38, 1e-45, 1e-7, 2.0**-40], [2.0, 3e30, 1e-45, 0.3, 2.0**-40]])])
    hi = torch.maximum(hi, lo).nan_to_num(posinf=3.4e38)
    boxes = Boxes(lo, hi, torch.zeros(len(lo), 1), torch.zeros(len(lo), dtype=torch.long), torch.zeros(len(lo)))
    for dim in range(5):
        which = torch.full((len(lo),), dim)
        children = InputBranchAndBound.split(boxes, which)
        left, right = children.select(torch.arange(len(lo))), children.select(torch.arange(len(lo), 2 * len(lo)))
        assert torch.equal(left.lo, lo) and torch.equal(right.hi, hi)
        assert torch.equal(left.hi[:, dim], right.lo[:, dim])  # the same float on both sides: no gap
        assert bool(((lo[:, dim] <= left.hi[:, dim]) & (left.hi[:, dim] <= hi[:, dim])).all())
        others = torch.arange(5) != dim
        assert torch.equal(left.hi[:, others], hi[:, others]) and torch.equal(right.lo[:, others], lo[:, others])


def test_certifies_what_deeppoly_cannot():
    """Properties MILP proves but DeepPoly on the whole box does not: input splitting proves all of them."""
    hard = 0
    for seed in range(4):
        net = _net("fc", 20 + seed)
        for lower, upper, spec in _properties(net, 20 + seed):
            with torch.no_grad():
                bound = DeepPoly(net, lower[None], upper[None]).bound(spec.C[None])
            if bool((clause_margins(bound, spec.d[None], spec.clause, spec.n_clauses) > 0).all()):
                continue
            if milp_verify(net, lower, upper, spec.C, spec.d, spec.clause).status != "certified":
                continue
            hard += 1
            result = _search(net, lower, upper, spec).run()
            assert result.status == "certified" and result.stats["boxes"] > 1
    assert hard >= 2


def test_mnbab_picks_input_splitting_for_small_inputs():
    """--split auto: input splitting for 4 inputs (and the verdict is exact), ReLU splitting for images."""
    assert splits_input(MNBaBConfig(), 16) and not splits_input(MNBaBConfig(), 17)
    assert splits_input(MNBaBConfig(split="input"), 784) and not splits_input(MNBaBConfig(split="relu"), 4)
    net = _net("fc", 30)
    lower, upper, spec = _properties(net, 30)[-1]
    for split, kind in (("auto", "input"), ("relu", None)):
        result = mnbab_verify(net, lower, upper, spec.C, spec.d, spec.clause, time.monotonic() + 60,
                              _is_counterexample(net, spec), MNBaBConfig(split=split, multineuron=False))
        _check_verdict(net, lower, upper, spec, result)
        if "bab" in result.stats:
            assert result.stats["bab"][0].get("split") == kind


def test_timeout_is_reported_not_guessed():
    net = _net("fc", 0)
    lower, upper, spec = _properties(net, 0)[2]
    assert _search(net, lower, upper, spec, timeout=-1.0).run().status == "timeout"


def test_face_samples_lie_in_their_box_and_often_on_its_faces():
    net = _net("fc3", 0)
    lower, upper, spec = _properties(net, 0)[0]
    search = _search(net, lower, upper, spec)
    lo, hi = torch.tensor([[0.0, 1, 2], [5, 5, 5]]), torch.tensor([[1.0, 3, 2], [6, 9, 7]])
    x = search.face_samples(Boxes(lo, hi, torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), torch.zeros(2)), 4000)
    assert x.shape == (2, 4000, 3) and bool(((x >= lo[:, None]) & (x <= hi[:, None])).all())
    at_lower, at_upper = (x == lo[:, None]).float().mean(1), (x == hi[:, None]).float().mean(1)
    assert torch.allclose(at_lower[:, :2], torch.tensor(0.25), atol=0.03)
    assert torch.allclose(at_upper[:, :2], torch.tensor(0.25), atol=0.03)


def test_memory_cap_bounds_the_queue_and_keeps_verdicts_exact():
    """With room for fewer sub-boxes than an uncapped search holds, the search goes depth-first and still
    decides as MILP does; with room for one it stops with unknown ('memory') instead of growing."""
    capped_below_need, stopped = 0, 0
    for kind, seed in [("fc2", 2), ("fc3", 1)]:
        net = _net(kind, seed)
        for lower, upper, spec in _properties(net, seed):
            config = InputBaBConfig(batch_size=4)
            free = _search(net, lower, upper, spec, config).run()
            need = free.stats["max_queue"]
            if free.status != "certified" or need < 6:
                continue
            row_bytes = free.stats["row_bytes"]
            for capacity in (1, need - 2):
                config.max_memory = capacity * row_bytes + row_bytes // 2
                capped = _search(net, lower, upper, spec, config).run()
                assert capped.stats["queue_capacity"] == capacity and capped.stats["max_queue"] <= capacity
                if capped.status == "certified":
                    _check_verdict(net, lower, upper, spec, capped)
                    capped_below_need += 1
                else:
                    assert capped.status == "unknown" and capped.stats["stopped"] == "memory"
                    stopped += 1
    assert capped_below_need > 0  # certified with less room than the uncapped search used
    assert stopped > 0  # and a single slot is too few


@pytest.mark.parametrize("net, prop", [("4_5", "prop_10"), ("1_9", "prop_7")])
def test_acasxu_disjunctive_property_decided_as_known(net, prop):
    """ACAS Xu properties whose unsafe region is a disjunction of clauses (4 and 2): MN-BaB with input
    splitting decides them within seconds, as reference_results.csv says; a counterexample holds in
    onnxruntime on the original model."""
    model, batch = acasxu_property(net, prop)
    expected = reference_result("acasxu", f"onnx/ACASXU_run2a_{net}_batch_2000.onnx", f"vnnlib/{prop}.vnnlib")
    netw = model.network
    assert len(batch) == 1 and batch.n_clauses >= 2
    result = mnbab_verify(netw, batch.lower[0], batch.upper[0], batch.C[0], batch.d[0], batch.clause,
                          time.monotonic() + 60, lambda x: batch.property_margin(netw(x)) <= 0)
    assert result.status == {"unsat": "certified", "sat": "falsified"}[expected], result.stats
    if result.status == "falsified":
        x = result.counterexample
        assert bool(((x >= batch.lower[0]) & (x <= batch.upper[0])).all())
        y = torch.as_tensor(model.run(x[None].numpy()))
        assert bool(batch.property_margin(y)[0] <= 0)
