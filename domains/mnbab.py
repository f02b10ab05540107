"""The MN-BaB verifier for one property, cheapest stage first.

DeepPoly -> alpha (slopes of all bounds optimised) -> multi-neuron constraints
(groups of k unstable ReLUs per layer, multipliers gamma optimised jointly with
the final slopes) -> intermediate bounds tightened by a small branch-and-bound
per neuron -> branch-and-bound on each clause not yet excluded, hardest
first. Every stage's bounds are sound; the first decision wins.

Branch-and-bound splits ReLUs (:mod:`domains.bab`) or, for inputs of few
dimensions, the input box (:mod:`domains.input_bab`); ``split='auto'`` picks
input splitting up to ``INPUT_SPLIT_MAX_DIMS`` input dimensions. Input
splitting skips the alpha and multi-neuron stages: their slopes and
constraints hold for the root box only and the sub-boxes are bounded by
DeepPoly afresh.

LeakyReLUs are rewritten as ``alpha x + (1 - alpha) relu(x)`` first, so every
stage treats them as ReLUs. Sigmoid and Tanh neurons are split at a point of
their input's interval (:class:`domains.bab.BranchAndBound`): their
subproblems never become exact, so on such networks the search is not
complete in finite time (it ends certified, falsified, timeout, or unknown
once every neuron is too narrow to split), and a ``certified`` is sound.
MaxPool keeps its own relaxation in every bound and is not split: a
subproblem whose ReLUs are all split is solved by the exact MILP (one binary
per window input), so the search stays complete on ReLU and MaxPool networks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from nncert.domains import decide
from nncert.domains.activations import relu_form
from nncert.domains.alpha import StopBy
from nncert.domains.bab import (
    BaBConfig,
    BaBResult,
    BranchAndBound,
    LayerConstraints,
    SplitDeepPoly,
    Subproblems,
    split_nodes,
)
from nncert.domains.deeppoly import DeepPoly
from nncert.domains.input_bab import InputBaBConfig, InputBranchAndBound, clause_margins
from nncert.domains.intermediate_bab import IntermediateBaBConfig, tighten
from nncert.domains.multineuron import octahedral_directions, relu_hull_constraints, select_groups
from nncert.domains.network import Network


@dataclass
class MNBaBConfig:
    alpha_iterations: int = 20
    lr_alpha: float = 0.1
    multineuron: bool = True
    k: int = 3  # neurons per multi-neuron group (2..4)
    max_groups: int = 60  # groups per ReLU layer
    # a safety net, not a budget: hulls normally take seconds (the group cap bounds the work), so the
    # constraints do not depend on machine load; only a huge network stops early, with fewer constraints
    multineuron_share: float = 0.5
    # more steps pay off since every subproblem inherits the intermediate bounds they tighten; Adam moves a
    # multiplier by about its learning rate per step, and a neuron lies in tens of groups, hence a rate far below
    # the slopes' (both measured: benchmarks/README.md, "MN-BaB defaults and what measured them")
    gamma_iterations: int = 60
    lr_gamma: float = 0.003
    # the constraints also tighten the intermediate bounds of the layers after theirs (with multipliers of
    # their own, the slopes of those bounds optimised again), and every subproblem inherits those bounds
    multineuron_intermediate: bool = True
    # The intermediate bounds' searches (domains.intermediate_bab), once the root and the attack fail, each
    # chosen on mnist_fc (benchmarks/README.md, "MN-BaB defaults and what measured them"):
    # at most this share of the time left goes to them, in passes of growing depth (0: off)
    intermediate_bab_share: float = 0.5
    # a deeper pass follows one that closed at least this share of its negative margin (else branch-and-bound)
    intermediate_bab_deepen: float = 0.1
    # the later passes search the bounds of highest priority up to this share of the total (1: all)
    intermediate_bab_focus: float = 0.9
    # a node whose searches closed less than this share of the negative margins leaves the later passes
    intermediate_bab_drop: float = 0.01
    intermediate_bab_config: IntermediateBaBConfig = field(default_factory=IntermediateBaBConfig)
    # Where the multi-neuron groups and the intermediate bounds' searches pay, by layer shape: not on a
    # convolution's ReLU layer (a feature map) with more than this many unstable neurons at the root, nor behind
    # one. Groups are drawn from a layer's 30 most unstable neurons and a search splits a few dozen leaves per
    # bound: on CIFAR-10 conv layers (100-300 unstable) they cost much and moved little
    # (benchmarks/results/conv_profile.md), while on MLPs searching layers of up to 256 unstable neurons is what
    # proves mnist_fc's hard instances (benchmarks/README.md, "VNN-COMP 2022 mnist_fc")
    narrow_layer_unstable: int = 90
    # restarts of the counterexample search before branch-and-bound (0: none): the pipeline's 5 can miss one
    # that 50 find in under a second (benchmarks/README.md, "MN-BaB defaults and what measured them")
    attack_restarts: int = 50
    # ... within at most this share of the time left: on a CIFAR-10 conv net the 50 restarts take 3.6 s of CPU
    # (oval21 cifar_base_kw), half of a 15 s budget that branch-and-bound needs (conv_profile.md)
    attack_share: float = 0.1
    bab: bool = True
    bab_config: BaBConfig = field(default_factory=BaBConfig)
    # bytes the root's optimisations may take (None: no cap): nodes whose per-row slopes would not fit keep their
    # DeepPoly bounds (domains.alpha); on a conv net fed by a 16-dim input the uncapped alpha stage took 18-21 GB
    max_memory: int | None = None
    split: str = "auto"  # 'relu', 'input', or 'auto' (input when the input has <= INPUT_SPLIT_MAX_DIMS dims)
    input_bab_config: InputBaBConfig = field(default_factory=InputBaBConfig)


# Halving every dimension once takes 2^n sub-boxes: at 16 dimensions that is 65536 DeepPoly bounds, about
# what a batched search gets through in a one-minute timeout on a small network; beyond that input splitting
# cannot even refine each dimension once and ReLU splitting is the better bet. VNN-COMP's input-split
# benchmarks (ACAS Xu: 5, cartpole/lunar lander control nets: 4-8) lie far below it, image inputs far above.
INPUT_SPLIT_MAX_DIMS = 16


def splits_input(config: MNBaBConfig, n_inputs: int) -> bool:
    """Whether branch-and-bound splits the input box (else ReLUs) for an input of ``n_inputs`` dimensions."""
    if config.split not in ("auto", "relu", "input"):
        raise ValueError(f"unknown split {config.split!r}")
    return config.split == "input" or (config.split == "auto" and n_inputs <= INPUT_SPLIT_MAX_DIMS)


def wide_layers(dp: DeepPoly, config: MNBaBConfig) -> set[int]:
    """Pre-activation feature maps (C, H, W) of a single-sample ``dp`` with more than
    ``config.narrow_layer_unstable`` unstable neurons: no multi-neuron groups and no intermediate searches there
    or behind them."""
    pre = (dp.net.nodes[relu].inputs[0] for relu in dp.net.relu_nodes)
    return {node for node in pre if len(dp.net.shapes[node]) > 1
            and int(((dp.bounds[node][0] < 0) & (dp.bounds[node][1] > 0)).sum()) > config.narrow_layer_unstable}


def multineuron_constraints(dp: DeepPoly, config: MNBaBConfig, deadline: float = math.inf
                            ) -> dict[int, LayerConstraints]:
    """Constraints over groups of unstable ReLUs of every layer but the wide ones (:func:`wide_layers`), for one
    input box (N = 1).

    Layers (and groups) not reached by the ``deadline`` get none: fewer constraints, still sound.
    """
    plain = DeepPoly(dp.net, dp.lower, dp.upper)  # default slopes for the octahedral queries
    plain.bounds, plain.upper_lines = dp.bounds, dp.upper_lines
    directions = octahedral_directions(config.k).to(dp.lower)  # (D, k)
    out, wide = {}, wide_layers(dp, config)
    for relu in dp.net.relu_nodes:
        if time.monotonic() > deadline:
            break
        pre = dp.net.nodes[relu].inputs[0]
        if pre in wide:
            continue
        lo, hi = (t[0].flatten() for t in dp.bounds[pre])
        groups = select_groups(lo, hi, k=config.k, max_groups=config.max_groups)  # (G, k)
        if len(groups) == 0:
            continue
        g, k = groups.shape
        rows = torch.zeros(g, len(directions), lo.numel(), dtype=lo.dtype, device=lo.device)
        rows.scatter_(2, groups.unsqueeze(1).expand(g, len(directions), k), -directions.expand(g, -1, -1))
        A = rows.reshape(1, -1, *dp.net.shapes[pre])
        with torch.no_grad():
            dir_upper = -plain.linear_lower(pre, A).reshape(g, len(directions))  # max of d . x_G
        hull = relu_hull_constraints(dir_upper.double().cpu(), lo[groups].double().cpu(),
                                     hi[groups].double().cpu(), directions.double().cpu(), deadline)
        if len(hull.groups) == 0:
            continue
        out[relu] = LayerConstraints(groups[hull.groups.to(groups.device)],
                                     *(t.to(lo) for t in (hull.a, hull.b, hull.c)))
    return out


def root_bounds(net: Network, lower: Tensor, upper: Tensor, C: Tensor, config: MNBaBConfig,
                deadline: float = math.inf, decided: Callable[[Tensor], bool] = lambda bound: False,
                relu_split: bool = True, stats: dict | None = None) -> tuple[SplitDeepPoly, Tensor]:
    """The root's stages on one input box (*in) for rows C (1, m, n_out), each run until ``decided(bound)``.

    DeepPoly, then, for a search that splits ReLUs (``relu_split``), alpha
    (all slopes) and the multi-neuron constraints with their multipliers,
    optimised with the slopes. Returns the domain (bounds, multipliers and
    constraints: where branch-and-bound starts) and the best row bounds (1, m);
    ``stats["stage"]`` names the last stage run.
    """
    stats = {} if stats is None else stats
    stats["stage"] = "deeppoly"
    dp = SplitDeepPoly(net, lower.unsqueeze(0), upper.unsqueeze(0))
    dp.deadline, dp.max_memory = deadline, config.max_memory
    start = time.monotonic()
    with torch.no_grad():
        bound = dp.bound(C)
    # a step recomputes the optimised bounds forward and backward: the first judged at twice the DeepPoly pass,
    # the multi-neuron stage's first at the alpha stage's last
    stop = StopBy(deadline, decided, first_step=2 * (time.monotonic() - start))
    # input splitting bounds every sub-box afresh: the root's optimised slopes would not reach them, and on ACAS
    # Xu the root's 20 steps took 0.7-1.9 s of instances decided in 1-7 s, for no fewer sub-boxes
    if not decided(bound) and config.alpha_iterations > 0 and relu_split and time.monotonic() < deadline:
        stats["stage"] = "alpha"
        bound = torch.maximum(bound, dp.optimize(C, config.alpha_iterations, config.lr_alpha, intermediate=True,
                                                 done=stop))
        stats["alpha_frozen"] = len(dp.frozen)
    if not decided(bound) and config.multineuron and relu_split and time.monotonic() < deadline:
        stats["stage"] = "multineuron"
        now = time.monotonic()
        dp.constraints = multineuron_constraints(dp, config, now + config.multineuron_share * (deadline - now))
        stats["multineuron_constraints"] = sum(len(c) for c in dp.constraints.values())
        dp.gamma = {r: C.new_zeros(1, C.shape[1], len(c)) for r, c in dp.constraints.items()}
        # the intermediate bounds move only if a constraint precedes one (else this would be more alpha steps)
        intermediate = (config.multineuron_intermediate
                        and min(dp.constraints, default=math.inf) < max(dp.refine_idx, default=0))
        dp.intermediate_gamma = intermediate
        if dp.gamma:
            bound = torch.maximum(bound, dp.optimize(C, config.gamma_iterations, config.lr_alpha,
                                                     intermediate=intermediate,
                                                     done=StopBy(deadline, decided, first_step=stop.step),
                                                     lr_of={"gamma": config.lr_gamma}))
    return dp, bound


def tighten_root(dp: SplitDeepPoly, C: Tensor, bound: Tensor, margins: Callable[[Tensor], Tensor],
                 config: MNBaBConfig, deadline: float = math.inf, stats: dict | None = None) -> Tensor:
    """The root's intermediate bounds tightened by their own searches (:mod:`domains.intermediate_bab`) in passes
    of growing depth, the final multipliers optimised again after each: the best row bounds (1, m), at least the
    root's ``bound`` (1, m).

    ``margins(bound)`` are the property's clause margins (n_clauses,) given
    row bounds, all > 0 when certified. Every pass doubles the rounds and the
    leaves split per round of the one before; the first searches every
    unstable neuron's bounds, the deeper ones only the bounds the negative
    margins depend on most (``intermediate_bab_focus``), of the nodes whose
    searches closed at least ``intermediate_bab_drop`` of the negative
    margins' sum in every pass before; the bounds of wide layers (:func:`wide_layers`) and
    of the layers after one are not searched. The passes stop once
    the worst margin is positive, a pass closes less than
    ``intermediate_bab_deepen`` of the negative margin it started from, or
    ``intermediate_bab_share`` of the time left is spent.
    ``stats["intermediate_passes"]`` counts them.
    """
    stats = {} if stats is None else stats
    now = time.monotonic()
    stop = now + config.intermediate_bab_share * (deadline - now)
    search, best, gap, focus = config.intermediate_bab_config, bound, -float(margins(bound).min()), 1.0

    def objective(dp: SplitDeepPoly) -> Tensor:
        return margins(dp.linear_lower(dp.output, C)).clamp(max=0).sum()

    # a search splits the layers before its node: behind a wide layer it moves the bound as little as on one
    first_wide = min(wide_layers(dp, config), default=math.inf)
    skip = {node for node in dp.refine_idx if node >= first_wide}
    if set(dp.refine_idx) <= skip:
        return best
    while True:
        gains = tighten(dp, search, stop, objective, focus, skip)
        skip |= {node for node, gain in gains.items() if gain < config.intermediate_bab_drop}
        stats["intermediate_passes"] = stats.get("intermediate_passes", 0) + 1
        best = torch.maximum(best, dp.optimize(C, config.alpha_iterations, config.lr_alpha, intermediate=False,
                                               done=StopBy(deadline, lambda b: bool(decide.proved(margins(b)).all())),
                                               lr_of={"gamma": config.lr_gamma}))
        left = -float(margins(best).min())
        if left < 0 or gap - left <= config.intermediate_bab_deepen * gap or time.monotonic() > stop:
            return best
        gap, focus = left, config.intermediate_bab_focus
        search = replace(search, rounds=2 * search.rounds, width=2 * search.width)


def mnbab_verify(net: Network, lower: Tensor, upper: Tensor, C: Tensor, d: Tensor, clause: Tensor,
                 deadline: float, is_counterexample: Callable[[Tensor], Tensor],
                 config: MNBaBConfig | None = None,
                 attack: Callable[[float], Tensor | None] | None = None) -> BaBResult:
    """Decide one property: rows ``C y <= d`` (C (m, n_out), d (m,)) grouped by ``clause`` (m,).

    lower, upper: the input box (*input_shape). ``is_counterexample`` maps
    inputs (B, *in) to (B,) bool (a concrete check of the whole property).
    ``attack(deadline)``, a counterexample search returning a checked
    counterexample (*input_shape) or None, runs once the root bounds fail,
    before the intermediate bounds' searches and branch-and-bound: a search
    stronger than the cheap one before the domains is worth its second there
    (on mnist_fc 256x4 prop_8_0.05 it finds the counterexample in a second,
    after the searches in 57 s). Input splitting searches for counterexamples
    in every batch of sub-boxes instead.
    """
    config = config or MNBaBConfig()
    net = relu_form(net)  # LeakyReLUs become ReLUs that every stage below handles
    stats: dict = {}
    input_split = config.bab and splits_input(config, lower.numel())
    start = time.monotonic()
    n_clauses = int(clause.max()) + 1
    C, d, clause = C.unsqueeze(0), d.unsqueeze(0), clause.to(C.device)

    def margins_of(bound: Tensor) -> Tensor:  # (n_clauses,)
        return clause_margins(bound, d, clause, n_clauses)[0]

    def decided(bound: Tensor) -> bool:
        return bool(decide.proved(margins_of(bound)).all())

    dp, bound = root_bounds(net, lower, upper, C, config, deadline, decided, relu_split=not input_split,
                            stats=stats)
    stats["root_time_s"] = time.monotonic() - start
    margins = margins_of(bound)
    stats["root_margin"] = float(margins.min())
    if decided(bound):
        return BaBResult("certified", stats=stats)
    if time.monotonic() > deadline:
        return BaBResult("timeout", stats=stats)
    # input splitting probes every batch of sub-boxes for counterexamples (faces, PGD), where the restarts over
    # the whole box miss ACAS Xu's: on 1_3 prop_2 50 restarts fail in 2.9 s, the search finds one in 1.1 s
    if attack is not None and config.bab and not input_split:
        stats["stage"] = "attack"
        now = time.monotonic()
        found = attack(now + config.attack_share * (deadline - now))
        if found is not None:
            return BaBResult("falsified", found, stats)
    if not input_split and config.intermediate_bab_share > 0 and time.monotonic() < deadline:
        stats["stage"] = "intermediate_bab"
        bound = tighten_root(dp, C, bound, margins_of, config, deadline, stats)
        margins = margins_of(bound)
        stats["tightened_margin"] = float(margins.min())
        if decided(bound):
            return BaBResult("certified", stats=stats)
    if not config.bab:
        return BaBResult("unknown", stats=stats)
    if time.monotonic() > deadline:
        return BaBResult("timeout", stats=stats)
    stats["stage"] = "bab"
    if input_split:
        return _input_bab(net, dp, C, d, clause, margins, config.input_bab_config, is_counterexample, deadline,
                          stats)
    for k in torch.argsort(margins).tolist():  # hardest clause first
        if decide.proved(margins[k]):
            continue
        rows = torch.nonzero(clause == k).flatten()
        result = _bab_clause(dp, C[:, rows], d[:, rows], rows, config.bab_config, is_counterexample, deadline)
        stats.setdefault("bab", []).append(result.stats)
        if result.status != "certified":
            return BaBResult(result.status, result.counterexample, stats)
    return BaBResult("certified", stats=stats)


def _input_bab(net: Network, dp: SplitDeepPoly, C: Tensor, d: Tensor, clause: Tensor, margins: Tensor,
               config: InputBaBConfig, is_counterexample, deadline: float, stats: dict) -> BaBResult:
    """Input splitting on all clauses the root did not exclude, searched together."""
    rows = torch.nonzero(~decide.proved(margins[clause])).flatten()
    _, open_clause = torch.unique(clause[rows], return_inverse=True)  # renumbered 0..n_open-1
    search = InputBranchAndBound(net, dp.lower, dp.upper, C[:, rows], d[:, rows], open_clause, config,
                                 is_counterexample, deadline)
    result = search.run()
    stats["bab"] = [result.stats]
    return BaBResult(result.status, result.counterexample, stats)


def _bab_clause(dp: SplitDeepPoly, C: Tensor, d: Tensor, rows: Tensor, config: BaBConfig,
                is_counterexample, deadline: float) -> BaBResult:
    """Branch-and-bound on the rows of one clause, starting from the root's optimised multipliers."""
    params = dp.final_parameters()
    relus = dp.net.relu_nodes
    pre = [dp.net.nodes[node].inputs[0] for node in split_nodes(dp.net, config.split_activations)]
    root = Subproblems(
        bounds={node: dp.bounds[node] for node in pre},
        split={r: torch.zeros(1, *dp.net.shapes[r], dtype=torch.int8, device=C.device) for r in relus},
        alpha={node: p[:, rows] for (kind, node), p in params.items() if kind == "alpha"},
        beta={r: C.new_zeros(1, len(rows), *dp.net.shapes[r]) for r in relus},
        gamma={r: g[:, rows] for r, g in dp.gamma.items()},
        lower=torch.full((1, len(rows)), -torch.inf, device=C.device, dtype=C.dtype),
        depth=torch.zeros(1, dtype=torch.long, device=C.device), spec=torch.zeros(1, dtype=torch.long, device=C.device))
    search = BranchAndBound(dp, C, d, config, is_counterexample, deadline)
    root, feasible, candidates = search.bound(root, refine_from=len(dp.net.nodes), iterations=0)
    found = search.check(candidates, feasible)
    if found is not None:
        return BaBResult("falsified", found, search.stats)
    return search.run(root)
