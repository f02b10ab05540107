"""MN-BaB end to end: verdicts agree with exact MILP, every property of tiny nets is decided, precision order."""

import math
import time
from dataclasses import replace

import pytest
import torch

from nncert.domains import box, intermediate_bab, mnbab
from nncert.domains.activations import relu_form
from nncert.domains.alpha import AlphaDeepPoly
from nncert.domains.bab import BaBConfig
from nncert.domains.deeppoly import DeepPoly
from nncert.domains.from_torch import network_from_torch
from nncert.domains.input_bab import clause_margins
from nncert.domains.intermediate_bab import IntermediateBaBConfig, tighten
from nncert.domains.milp import milp_verify
from nncert.domains.mnbab import MNBaBConfig, mnbab_verify, root_bounds, tighten_root
from nncert.domains.pgd import pgd_maximize
from nncert.verifier.spec import robustness_spec
from tests.paths import mnist_fc_property
from tests.random_nets import _randomize, fc_model, input_fed_conv_network, random_network, random_region
from tests.soundness import assert_node_bounds_hold, concrete_minimum, exact_range

KINDS = ["fc", "conv", "residual"]
# radii from mostly-certified to mostly-falsified; the conv net's 150 ReLUs make the exact MILP
# reference slow beyond 0.1 (minutes), so its larger radii run in the slow sweep only
EPSILONS = {"fc": [0.03, 0.08, 0.15, 0.3], "conv": [0.03, 0.06, 0.1], "residual": [0.03, 0.08, 0.15, 0.3]}
SLOW_EPSILONS = {"fc": [0.05, 0.2, 0.5], "conv": [0.12, 0.15], "residual": [0.05, 0.2, 0.5]}


def _properties(kind, seed, epsilons=None):
    """Robustness properties of one random net at several radii around one random point."""
    _, net = random_network(seed, kind, detach=True)
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(*net.input_shape, generator=g)
    spec = robustness_spec(int(net(x[None]).argmax()), net.output_shape[0])
    return net, [(x - eps, x + eps, spec) for eps in (epsilons or EPSILONS[kind])]


def _is_counterexample(net, spec):
    return lambda xs: ((net(xs) @ spec.C.T - spec.d) <= 0).any(1)


def _mnbab(net, lower, upper, spec, config=None, timeout=120.0):
    return mnbab_verify(net, lower, upper, spec.C, spec.d, spec.clause, time.monotonic() + timeout,
                        _is_counterexample(net, spec), config)


def _check_against_milp(kind, seeds, epsilons, config):
    """Soundness and completeness: certified <=> MILP certified; falsified carries a real counterexample."""
    for seed in seeds:
        net, props = _properties(kind, seed, epsilons)
        for lower, upper, spec in props:
            result = _mnbab(net, lower, upper, spec, config)
            exact = milp_verify(net, lower, upper, spec.C, spec.d, spec.clause)
            assert result.status in ("certified", "falsified"), (seed, result.status, result.stats)
            if exact.status in ("certified", "falsified"):
                assert result.status == exact.status, (seed, result.stats)
            if result.status == "falsified":
                x = result.counterexample
                assert (x >= lower).all() and (x <= upper).all()
                assert bool(_is_counterexample(net, spec)(x[None])[0])


# the pipeline without the root's extra stages (branch-and-bound decides most properties), and all of it
PIPELINES = {"single-neuron": MNBaBConfig(multineuron=False, intermediate_bab_share=0.0, split="relu"),
             "multi-neuron": MNBaBConfig(split="relu")}


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("kind", KINDS)
def test_agrees_with_exact_milp_and_decides_everything(kind, pipeline):
    _check_against_milp(kind, range(4), EPSILONS[kind], PIPELINES[pipeline])


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("kind", KINDS)
def test_agrees_with_exact_milp_sweep(kind, pipeline):
    """The same check over more nets and radii (a few hundred properties)."""
    _check_against_milp(kind, range(4, 16), EPSILONS[kind] + SLOW_EPSILONS[kind], PIPELINES[pipeline])


@pytest.mark.parametrize("branching", ["babsr", "acs"])
def test_branching_heuristics_reach_the_same_verdicts(branching):
    config = MNBaBConfig(bab_config=BaBConfig(branching=branching, batch_size=4), split="relu")
    for seed in range(3):
        net, props = _properties("fc", 50 + seed)
        for lower, upper, spec in props:
            exact = milp_verify(net, lower, upper, spec.C, spec.d, spec.clause)
            assert _mnbab(net, lower, upper, spec, config).status == exact.status


def test_precision_order_box_deeppoly_alpha_multineuron():
    """Certified counts box <= deeppoly <= mnbab; alpha >= DeepPoly, multi-neuron >= alpha and the intermediate
    bounds' searches >= multi-neuron, row by row."""
    counts = {"box": 0, "deeppoly": 0, "mnbab": 0}
    for kind in KINDS:
        for seed in range(2):
            net, props = _properties(kind, 100 + seed)
            for lower, upper, spec in props:
                lo, hi, C = lower[None], upper[None], spec.C[None]
                b = box.bound_linear(net, lo, hi, C)
                dp = DeepPoly(net, lo, hi).bound(C)
                alpha = AlphaDeepPoly(net, lo, hi).optimize(C, iterations=20)
                assert (dp >= b - 1e-6).all() and (alpha >= dp - 1e-6).all()
                counts["box"] += bool((b > 0).all())
                counts["deeppoly"] += bool((dp > 0).all())
                counts["mnbab"] += _mnbab(net, lower, upper, spec).status == "certified"
                stages = [_mnbab(net, lower, upper, spec, config) for config in (
                    MNBaBConfig(multineuron=False, intermediate_bab_share=0.0, bab=False),
                    MNBaBConfig(multineuron=True, intermediate_bab_share=0.0, bab=False),
                    MNBaBConfig(multineuron=True, bab=False))]
                margins = [result.stats.get("tightened_margin", result.stats.get("root_margin")) for result in stages]
                for weaker, stronger in zip(margins, margins[1:]):
                    if weaker is not None and stronger is not None:
                        assert stronger >= weaker - 1e-6
    assert counts["box"] <= counts["deeppoly"] <= counts["mnbab"]
    assert counts["mnbab"] > counts["box"]


def test_timeout_is_reported_not_guessed():
    net, props = _properties("conv", 3)
    lower, upper, spec = props[-1]
    result = _mnbab(net, lower, upper, spec, timeout=0.0)
    assert result.status in ("timeout", "falsified", "certified")
    if result.status == "certified":  # decided at the root before the clock was checked: must be right
        assert milp_verify(net, lower, upper, spec.C, spec.d, spec.clause).status == "certified"


def _wide_fc_property(seed, eps):
    """A robustness property of a 24x24 ReLU net on 8 inputs whose branch-and-bound needs a few subproblems."""
    net = network_from_torch(fc_model(seed, widths=(24, 24), n_in=8), (8,)).detach()
    x = torch.rand(8, generator=torch.Generator().manual_seed(1000 + seed))
    return net, x - eps, x + eps, robustness_spec(int(net(x[None]).argmax()), 3)


def test_memory_cap_bounds_the_queue_and_keeps_verdicts_exact():
    """With room for a few subproblems BaB goes depth-first and still certifies (checked by MILP); with
    room for one it stops with unknown ('memory') instead of growing."""
    capped_below_need, stopped = 0, 0
    for seed, eps in [(1, 0.07), (3, 0.2), (4, 0.2), (3, 0.16)]:
        net, lower, upper, spec = _wide_fc_property(seed, eps)
        config = MNBaBConfig(alpha_iterations=0, multineuron=False, intermediate_bab_share=0.0,
                             bab_config=BaBConfig(batch_size=4, iterations=3), split="relu")
        free = _mnbab(net, lower, upper, spec, config)
        assert free.status == "certified"
        row_bytes = free.stats["bab"][0]["row_bytes"]
        for capacity in (1, 3):
            config.bab_config.max_memory = capacity * row_bytes + row_bytes // 2
            capped = _mnbab(net, lower, upper, spec, config)
            runs = capped.stats["bab"]
            assert all(run["queue_capacity"] == capacity and run["max_queue"] <= capacity for run in runs)
            if capped.status == "certified":
                assert milp_verify(net, lower, upper, spec.C, spec.d, spec.clause).status == "certified"
                capped_below_need += max(run["max_queue"] for run in free.stats["bab"]) > capacity
            else:
                assert capped.status == "unknown" and runs[-1]["stopped"] == "memory"
                stopped += 1
        assert capped.status == "certified"  # three slots suffice for these properties
    assert capped_below_need > 0  # the cap did bind: the uncapped search held more open subproblems
    assert stopped > 0  # and a single slot is too few


def test_attack_runs_after_the_root_fails_and_before_branching():
    """The stronger counterexample search is skipped when the root certifies; its find is the verdict."""
    net, props = _properties("fc", 0, [0.01, 0.3])
    calls = []

    def attack(deadline):
        calls.append(deadline)
        return None

    easy, hard = (_mnbab(net, lo, hi, spec) for lo, hi, spec in props)
    assert easy.status == "certified" and hard.status == "falsified"
    lower, upper, spec = props[0]
    assert mnbab_verify(net, lower, upper, spec.C, spec.d, spec.clause, time.monotonic() + 60,
                        _is_counterexample(net, spec), attack=attack).status == "certified"
    assert calls == []
    lower, upper, spec = props[1]
    found = hard.counterexample
    result = mnbab_verify(net, lower, upper, spec.C, spec.d, spec.clause, time.monotonic() + 60,
                          _is_counterexample(net, spec), MNBaBConfig(split="relu"), attack=lambda deadline: found)
    assert result.status == "falsified" and result.stats["stage"] == "attack"
    assert torch.equal(result.counterexample, found)
    # input splitting searches for counterexamples in its batches instead
    result = mnbab_verify(net, lower, upper, spec.C, spec.d, spec.clause, time.monotonic() + 60,
                          _is_counterexample(net, spec), MNBaBConfig(split="input"), attack=attack)
    assert result.status == "falsified" and calls == [] and result.stats["stage"] == "bab"


def test_multineuron_constraints_tighten_the_mnist_fc_root():
    """256x4 prop_8_0.03: gamma's learning rate decides whether the constraints help at all (at the slopes'
    0.1 the worst clause stayed at alpha's -1.014; at 0.001 it reaches -0.94)."""
    model, batch = mnist_fc_property("256x4", "prop_8_0.03")
    margins = {}
    for multineuron in (False, True):
        result = mnbab_verify(model.network, batch.lower[0], batch.upper[0], batch.C[0], batch.d[0], batch.clause,
                              time.monotonic() + 120, lambda x: torch.zeros(len(x), dtype=torch.bool),
                              MNBaBConfig(multineuron=multineuron, intermediate_bab_share=0.0, bab=False))
        margins[multineuron] = result.stats["root_margin"]
    assert margins[True] > margins[False] + 0.05, margins


def test_intermediate_bounds_searches_certify_mnist_fc_prop_5_at_the_root():
    """256x4 prop_5_0.05: every clause's root margin is -0.30..-0.46 after the multi-neuron stage (branch-and-bound
    on the final bound took 290 s); with the intermediate bounds tightened by their own searches the root
    certifies it, and every node's bounds still hold at sampled points and at the property's PGD points."""
    model, batch = mnist_fc_property("256x4", "prop_5_0.05")
    net, lower, upper, C, d = model.network, batch.lower[0], batch.upper[0], batch.C[0:1], batch.d[0:1]
    n_clauses = int(batch.clause.max()) + 1
    dp, bound = root_bounds(net, lower, upper, C, MNBaBConfig(), time.monotonic() + 240)
    assert not (clause_margins(bound, d, batch.clause, n_clauses) > 0).all()
    bound = tighten_root(dp, C, bound, lambda b: clause_margins(b, d, batch.clause, n_clauses)[0], MNBaBConfig(),
                         time.monotonic() + 240)
    assert (clause_margins(bound, d, batch.clause, n_clauses) > 0).all()
    assert_node_bounds_hold(net, dp.bounds, lower[None], upper[None], samples=2000, tol=1e-4)
    for node in dp.refine_idx:  # PGD on the smallest slack of each tightened node's bounds, below and above
        lo, hi = (t.flatten(1) for t in dp.bounds[node])
        for sign, end in ((1.0, lo), (-1.0, hi)):
            def violation(x, node=node, sign=sign, end=end):
                return -(sign * (net(x, return_all=True)[node].flatten(1) - end)).amin(1)

            _, worst = pgd_maximize(violation, lower[None], upper[None], steps=50, step_size=0.05, restarts=4,
                                    generator=torch.Generator().manual_seed(node))
            assert float(worst.max()) <= 1e-4


@pytest.mark.parametrize("drop", [-math.inf, 1.0])
def test_passes_leave_out_the_nodes_whose_searches_closed_too_little(drop, monkeypatch):
    """A node whose searches closed less than ``intermediate_bab_drop`` of the negative margins' sum in a pass is
    not searched in the passes after it. No pass closes all of it: at 1 the second pass searches nothing (and
    is the last, having gained nothing); at -inf every pass searches every refined node."""
    net, props = _properties("residual", 0, [0.3])
    lower, upper, spec = props[0]
    C = spec.C.unsqueeze(0)
    config = MNBaBConfig(intermediate_bab_share=1.0, intermediate_bab_deepen=0.25, intermediate_bab_drop=drop,
                         intermediate_bab_config=IntermediateBaBConfig(rounds=2, width=2))
    dp, root = root_bounds(net, lower, upper, C, config)
    passes = []
    tighten_pass, search_node = mnbab.tighten, intermediate_bab.tighten_node

    def spy_pass(*args, **kwargs):
        passes.append([])
        return tighten_pass(*args, **kwargs)

    def spy_node(dp, node, *args):
        passes[-1].append(node)
        return search_node(dp, node, *args)

    monkeypatch.setattr(mnbab, "tighten", spy_pass)
    monkeypatch.setattr(intermediate_bab, "tighten_node", spy_node)
    stats = {}
    n_clauses = int(spec.clause.max()) + 1
    tighten_root(dp, C, root, lambda b: clause_margins(b, spec.d[None], spec.clause, n_clauses)[0], config,
                 math.inf, stats=stats)
    assert len(passes) == stats["intermediate_passes"] >= 2
    assert passes[0] == sorted(dp.refine_idx)
    if drop == 1.0:
        assert passes[1:] == [[]]
    else:
        assert all(nodes == passes[0] for nodes in passes)


def _multineuron_root(net, lower, upper, C, intermediate_gamma, config=None):
    """The root's domain on one box (*in) for rows C (1, K, *out), its multi-neuron stage optimising the
    intermediate slopes again in both cases; without ``intermediate_gamma`` all multipliers stay at zero."""
    config = replace(config or MNBaBConfig(), multineuron_intermediate=True, intermediate_bab_share=0.0)
    if not intermediate_gamma:
        config = replace(config, lr_gamma=0.0)
    return root_bounds(net, lower, upper, C, config)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_intermediate_bounds_with_multineuron_constraints_hold_at_sampled_points(kind):
    """Bounds tightened by the constraints' own multipliers contain every node's values at sampled points and
    corners, the final bound stays below PGD's, and they do tighten some (a large gamma step so that the
    multipliers really move)."""
    tighter, moved = 0, 0
    config = MNBaBConfig(gamma_iterations=20, lr_gamma=0.05)
    for seed in range(3):
        _, net = random_network(seed, kind, detach=True)
        lower, upper, C = random_region(net, seed, n=1, eps=0.3)
        plain = _multineuron_root(net, lower[0], upper[0], C, False, config)
        dp = _multineuron_root(net, lower[0], upper[0], C, True, config)
        moved += sum(int((g > 0).sum()) for g in dp.inter_gamma.values())
        assert_node_bounds_hold(net, dp.bounds, lower, upper, samples=4000, seed=seed)
        assert (dp.bound(C) <= concrete_minimum(net, lower, upper, C, seed=seed) + 1e-5).all()
        tighter += sum(int(((hi - lo) < (plain.bounds[node][1] - plain.bounds[node][0]) - 1e-6).sum())
                       for node, (lo, hi) in dp.bounds.items())
    assert moved > 0 and tighter > 0, (moved, tighter)


def test_multineuron_constraints_tighten_the_mnist_fc_intermediate_bounds():
    """256x4 prop_5_0.05: the layer-0 constraints shrink the layer-1 neurons' bounds (an LP over the
    triangle plus the same constraints shrinks their lower bounds by 5% of the width)."""
    model, batch = mnist_fc_property("256x4", "prop_5_0.05")
    net = model.network
    rows = torch.nonzero(batch.clause == 0).flatten()
    C = batch.C[0][rows][None]
    width = {}
    for intermediate_gamma in (False, True):
        dp = _multineuron_root(net, batch.lower[0], batch.upper[0], C, intermediate_gamma)
        lo, hi = dp.bounds[net.nodes[net.relu_nodes[1]].inputs[0]]
        width[intermediate_gamma] = float((hi - lo)[(lo < 0) & (hi > 0)].mean())
    assert width[True] < 0.98 * width[False], width


def test_deeper_passes_tighten_the_intermediate_bounds_while_they_pay_off():
    """With no time limit the passes of ever deeper searches end on their own, once one closes less than a
    quarter of the margin it started from. Their bounds are at least one pass's and tighter somewhere, never
    past the exact MILP range of the neurons they moved most, and the final bound stays below the sampled and
    PGD minimum. The property's first pass closes half of the root's negative margin (-0.56 -> -0.29)."""
    net, props = _properties("residual", 0, [0.3])
    lower, upper, spec = props[0]
    C = spec.C.unsqueeze(0)
    config = MNBaBConfig(intermediate_bab_share=1.0, intermediate_bab_deepen=0.25,
                         intermediate_bab_config=IntermediateBaBConfig(rounds=2, width=2))
    one_pass, _ = root_bounds(net, lower, upper, C, config)
    tighten(one_pass, config.intermediate_bab_config, math.inf)
    dp, root = root_bounds(net, lower, upper, C, config)

    def margins(bound):
        return clause_margins(bound, spec.d[None], spec.clause, int(spec.clause.max()) + 1)[0]

    stats = {}
    bound = tighten_root(dp, C, root, margins, config, math.inf, stats=stats)
    assert stats["intermediate_passes"] >= 2
    deeper = 0
    for node in dp.refine_idx:
        lo, hi = (t.flatten() for t in dp.bounds[node])
        lo1, hi1 = (t.flatten() for t in one_pass.bounds[node])
        assert (lo >= lo1 - 1e-6).all() and (hi <= hi1 + 1e-6).all()
        deeper += int(((lo > lo1 + 1e-4) | (hi < hi1 - 1e-4)).sum())
        for i in ((lo - lo1) + (hi1 - hi)).argsort(descending=True)[:2].tolist():
            low, high = exact_range(net, dp.lower, dp.upper, node, i)
            assert lo[i] <= low + 1e-5 and hi[i] >= high - 1e-5
    assert deeper > 0
    assert (bound <= concrete_minimum(net, lower[None], upper[None], C) + 1e-5).all()


QUICK = {"alpha_iterations": 1, "multineuron": False, "intermediate_bab_share": 0.0, "bab": False}
STAGES = {"alpha": dict(QUICK, alpha_iterations=10 ** 6),
          "multineuron": dict(QUICK, multineuron=True, gamma_iterations=10 ** 6),
          "intermediate_bab": dict(QUICK, intermediate_bab_share=1.0),
          "relu_bab": dict(QUICK, bab=True, split="relu"),
          "input_bab": dict(QUICK, bab=True, split="input")}


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_ends_by_the_timeout_on_a_conv_net(stage):
    """A 16-dim input feeding a conv net, a property no bound can prove and no counterexample check accepts:
    each stage alone would run on; the property must end within 10% + 1 s of its timeout, under a small
    memory cap."""
    net = input_fed_conv_network(0, side=16)
    x = torch.rand(16, generator=torch.Generator().manual_seed(0))
    spec = robustness_spec(int(net(x[None]).argmax()), 10)
    config = MNBaBConfig(**STAGES[stage], max_memory=8 << 20)
    timeout = 2.0
    start = time.monotonic()
    result = mnbab_verify(net, x - 0.05, x + 0.05, spec.C, spec.d + 100.0, spec.clause, start + timeout,
                          lambda xs: torch.zeros(len(xs), dtype=torch.bool), config)
    elapsed = time.monotonic() - start
    assert result.status in ("timeout", "unknown"), result.stats
    assert elapsed <= 1.1 * timeout + 1.0, (elapsed, result.stats)


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("kind", ["leakyrelu", "maxpool"])
def test_leaky_relu_and_maxpool_nets_agree_with_exact_milp(kind, pipeline):
    """LeakyReLU and MaxPool are not split, but the leaves left are solved by the exact MILP: every property is
    decided and agrees with it."""
    _check_against_milp(kind, range(2), {"leakyrelu": [0.03, 0.15, 0.3], "maxpool": [0.03, 0.06]}[kind],
                        PIPELINES[pipeline])


@pytest.mark.parametrize("split", ["relu", "input"])
@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_sigmoid_and_tanh_verdicts_hold_against_sampling_and_pgd(kind, split):
    """No exact reference exists: a certified property has no violation among dense samples, corners and PGD
    points of its clauses, and a falsified one carries a real counterexample."""
    verdicts = set()
    for seed in range(3):
        net, props = _properties(kind, seed, [0.02, 0.1, 0.5])
        for lower, upper, spec in props:
            result = _mnbab(net, lower, upper, spec, MNBaBConfig(split=split), timeout=5.0)
            verdicts.add(result.status)
            if result.status == "certified":
                rows = concrete_minimum(net, lower[None], upper[None], spec.C[None], samples=4000, seed=seed)
                margins = torch.stack([(rows[0] - spec.d)[spec.clause == k].max()
                                       for k in range(int(spec.clause.max()) + 1)])
                assert (margins > 0).all(), (seed, margins)
            elif result.status == "falsified":
                x = result.counterexample
                assert (x >= lower).all() and (x <= upper).all()
                assert bool(_is_counterexample(net, spec)(x[None])[0])
            else:
                assert result.status in ("unknown", "timeout")
    assert "certified" in verdicts and len(verdicts) > 1  # the radii reach beyond what can be certified


def _curve_net(kind, seed):
    """A 4-10-10-3 MLP whose only activations are Sigmoid or Tanh, and a random centre point."""
    act = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}[kind]
    model = torch.nn.Sequential(torch.nn.Linear(4, 10), act(), torch.nn.Linear(10, 10), act(),
                                torch.nn.Linear(10, 3)).eval()
    _randomize(model, torch.Generator().manual_seed(seed), gain=3.0)
    net = network_from_torch(model, (4,)).detach()
    return net, torch.rand(4, generator=torch.Generator().manual_seed(100 + seed))


def _assert_verdict_holds(net, lower, upper, spec, result, seed=0):
    """A certified property has no violation among dense samples, corners and PGD points of its clauses, a
    falsified one carries a real counterexample."""
    if result.status == "certified":
        rows = concrete_minimum(net, lower[None], upper[None], spec.C[None], samples=4000, seed=seed)
        margins = torch.stack([(rows[0] - spec.d)[spec.clause == k].max() for k in range(int(spec.clause.max()) + 1)])
        assert (margins > 0).all(), margins
    elif result.status == "falsified":
        x = result.counterexample
        assert (x >= lower).all() and (x <= upper).all()
        assert bool(_is_counterexample(net, spec)(x[None])[0])


@pytest.mark.parametrize("kind, seed, eps", [("sigmoid", 0, 0.25), ("tanh", 2, 0.05)])
def test_splitting_s_shaped_neurons_proves_what_the_root_cannot(kind, seed, eps):
    """On a network with only Sigmoid or Tanh activations, neither DeepPoly nor alpha proves the property, and
    splitting its neurons does; the verdict holds against sampling and PGD."""
    net, x = _curve_net(kind, seed)
    spec = robustness_spec(int(net(x[None]).argmax()), 3)
    lower, upper = x - eps, x + eps
    config = MNBaBConfig(split="relu")
    root = _mnbab(net, lower, upper, spec, replace(config, bab=False), timeout=30.0)
    assert root.status == "unknown"
    relus_only = _mnbab(net, lower, upper, spec, replace(config, bab_config=BaBConfig(split_activations=False)),
                        timeout=30.0)
    assert relus_only.status == "unknown" and relus_only.stats["bab"][0]["stopped"] == "leaf without an exact solver"
    result = _mnbab(net, lower, upper, spec, config, timeout=30.0)
    assert result.status == "certified", result.stats
    assert sum(b["subproblems"] for b in result.stats["bab"]) > 0
    _assert_verdict_holds(net, lower, upper, spec, result)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_s_shaped_splitting_verdicts_hold_against_sampling_and_pgd(kind):
    """Over seeded nets with only Sigmoid or Tanh and radii from certifiable to falsifiable, every verdict of the
    search holds; some come from splitting."""
    statuses, split = set(), 0
    for seed in range(2):
        net, x = _curve_net(kind, seed)
        spec = robustness_spec(int(net(x[None]).argmax()), 3)
        for eps in (0.1, 0.25, 0.8):
            config = MNBaBConfig(split="relu", intermediate_bab_share=0.0)
            result = _mnbab(net, x - eps, x + eps, spec, config, timeout=1.0)
            statuses.add(result.status)
            split += sum(b.get("subproblems", 0) for b in result.stats.get("bab", []))
            _assert_verdict_holds(net, x - eps, x + eps, spec, result, seed)
    assert "certified" in statuses and split > 0


def test_leaky_relus_are_split_like_relus():
    """A network whose only activations are LeakyReLUs is decided by splitting them (not by the exact leaf MILP),
    in agreement with the exact MILP."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 12), torch.nn.LeakyReLU(0.1), torch.nn.Linear(12, 12),
                                torch.nn.LeakyReLU(0.3), torch.nn.Linear(12, 3)).eval()
    _randomize(model, torch.Generator().manual_seed(3), gain=2.0)
    net = network_from_torch(model, (4,)).detach()
    assert relu_form(net).relu_nodes and not net.relu_nodes
    points = torch.randn(64, 4)
    assert torch.allclose(relu_form(net)(points), net(points), atol=1e-5)
    center = torch.rand(4, generator=torch.Generator().manual_seed(3))
    spec = robustness_spec(int(net(center[None]).argmax()), 3)
    split = 0
    for eps in (0.06, 0.07, 0.08):  # certified at the root, certified by splitting, falsified
        config = MNBaBConfig(multineuron=False, intermediate_bab_share=0.0, split="relu")
        result = _mnbab(net, center - eps, center + eps, spec, config)
        exact = milp_verify(net, center - eps, center + eps, spec.C, spec.d, spec.clause)
        assert result.status == exact.status
        split += sum(b["subproblems"] for b in result.stats.get("bab", []))
        assert all(not b.get("exact_leaves") for b in result.stats.get("bab", []))
    assert split > 0


def test_fully_connected_layers_are_never_wide():
    """The wide-layer rule is for feature maps: an MLP's layers keep their groups and searches at any width."""
    net, props = _properties("fc", 0, [0.15])
    lower, upper, spec = props[0]
    dp, _ = root_bounds(net, lower, upper, spec.C.unsqueeze(0), MNBaBConfig(multineuron=False))
    assert any(((lo < 0) & (hi > 0)).any() for lo, hi in dp.bounds.values())
    assert mnbab.wide_layers(dp, MNBaBConfig(narrow_layer_unstable=0)) == set()


def test_wide_layers_get_no_multineuron_groups_and_no_searches_behind_them():
    """A layer with more unstable neurons than ``narrow_layer_unstable`` gets no groups; the later layers'
    bounds are not searched either, while with a threshold above every layer both run everywhere."""
    net, props = _properties("conv", 0, [0.15])
    lower, upper, spec = props[0]
    C = spec.C.unsqueeze(0)
    dp, _ = root_bounds(net, lower, upper, C, MNBaBConfig(multineuron=False))
    pre = [net.nodes[r].inputs[0] for r in net.relu_nodes]
    unstable = {p: int(((dp.bounds[p][0] < 0) & (dp.bounds[p][1] > 0)).sum()) for p in pre}
    assert min(unstable.values()) >= 3  # every layer can form a group of 3
    threshold = unstable[pre[0]] - 1  # the first layer is wide
    config = MNBaBConfig(narrow_layer_unstable=threshold)
    assert mnbab.wide_layers(dp, config) == {p for p in pre if unstable[p] > threshold}
    narrow = mnbab.multineuron_constraints(dp, MNBaBConfig(narrow_layer_unstable=max(unstable.values())))
    wide = mnbab.multineuron_constraints(dp, config)
    assert set(narrow) == set(net.relu_nodes)
    assert set(wide) == {r for r, p in zip(net.relu_nodes, pre) if unstable[p] <= threshold}
    n_clauses = int(spec.clause.max()) + 1

    def searched_nodes(config):
        calls = []

        def tighten(dp, search, stop, objective, focus, skip):
            calls.append(set(dp.refine_idx) - set(skip))
            return {}

        tighten_before, mnbab.tighten = mnbab.tighten, tighten
        try:
            tighten_root(dp, C, dp.bound(C), lambda b: clause_margins(b, spec.d[None], spec.clause, n_clauses)[0],
                         config, time.monotonic() + 60)
        finally:
            mnbab.tighten = tighten_before
        return calls

    assert searched_nodes(MNBaBConfig(narrow_layer_unstable=max(unstable.values())))[0] == set(dp.refine_idx)
    assert searched_nodes(config) == []  # every refined bound lies behind the wide first layer
