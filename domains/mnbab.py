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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from domains.alpha import stop_by
from domains.bab import BaBConfig, BaBResult, BranchAndBound, LayerConstraints, SplitDeepPoly, Subproblems
from domains.deeppoly import DeepPoly
from domains.input_bab import InputBaBConfig, InputBranchAndBound, clause_margins
from domains.intermediate_bab import IntermediateBaBConfig, tighten
from domains.multineuron import octahedral_directions, relu_hull_constraints, select_groups
from domains.network import Network


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
    # with the intermediate bounds in the stage (below), more steps pay off in every subproblem: on 256x4
    # prop_5_0.05 the worst clause's root margin is -0.41 after 20 steps at learning rate 0.001, -0.34 after
    # 60 at 0.003 (2.6 / 7.1 s), and branch-and-bound then proves three of its clauses in 240 s instead of none
    gamma_iterations: int = 60
    # Adam moves each multiplier by about its learning rate per step. A neuron lies in tens of groups with up
    # to 16 constraints each, so gamma steps of the slopes' 0.1 swamp the back-substituted coefficients
    # (|A| ~ 0.01-0.1 on mnist_fc): on 256x4 prop_8_0.03 / prop_0_0.05 the multi-neuron stage gained
    # nothing over alpha on the worst clause; at 0.001 it gains 0.08 / 0.22.
    lr_gamma: float = 0.003
    # the constraints also tighten the intermediate bounds of the layers after theirs (with multipliers of
    # their own, the slopes of those bounds optimised again), and every subproblem inherits those bounds
    multineuron_intermediate: bool = True
    # once the root fails (and the attack after it), each unstable neuron's bounds in every refined layer are
    # tightened by a small branch-and-bound of its own (domains.intermediate_bab), in passes of growing depth,
    # with at most this share of the time left (0: off). On 256x4 prop_5_0.05 (two threads) one pass takes 18 s
    # and lifts every clause's margin from -0.30..-0.46 to +0.60..+0.73: certified before branching, where
    # branch-and-bound on the final bound needed 290 s. On prop_4_0.05 the worst margin is -7.05 at the root,
    # -1.20 after one pass (16 s), -0.51 after a pass twice as deep (58 s) and +0.41 after the next (157 s)
    intermediate_bab_share: float = 0.5
    # a deeper pass follows only one that closed at least this share of the (negative) margin it started from:
    # once they gain little, branch-and-bound is the better use of the time (prop_4_0.05 above: 83%, 58%, then
    # certified). Not more: the cheap first pass often closes little where the deeper ones close most (256x4
    # prop_7_0.05: 16%, then 72% of the rest at 20 x 32)
    intermediate_bab_deepen: float = 0.1
    # the passes after the first search only the bounds of highest priority (intermediate_bab.priority: the
    # margins' derivative times the bound's room) until they make up this share of the total (1: all). On 256x4
    # prop_7_0.05 a 20 x 32 pass after 5 x 8 and 10 x 16 takes 94 s on all 196 bounds and 27 s on the 63 that
    # make up 90%, for a worst margin of -0.30 and -0.36 (-1.07 before it)
    intermediate_bab_focus: float = 0.9
    # a node whose searches closed less than this share of the negative margins' sum in a pass is left out of
    # the passes after it. Once the later nodes have searched bounds, an earlier node's bounds only reach the
    # margins through those searches: on 256x6 prop_1_0.03 the second pass's searches of layers 2-4 closed
    # 0.003% each (21 s), the third pass's 0.3% in 82 s; leaving them out, the third pass takes 46 s instead of
    # 130 s (-1.04 at 183 s instead of -0.75 at 276 s), and the fourth's searches of layer 5 reach -0.43 by 212 s.
    # Ten slow mnist_fc instances take 1117 s instead of 1198 s; 256x4 prop_6_0.03 is slower (195 s instead of
    # 168 s): the gain counts a node's effect through back-substitution only, not through the later nodes'
    # searches, which its dropped layer 2 helped (benchmarks/README.md)
    intermediate_bab_drop: float = 0.01
    intermediate_bab_config: IntermediateBaBConfig = field(default_factory=IntermediateBaBConfig)
    # restarts of the counterexample search before branch-and-bound (0: none); on mnist_fc 256x4 prop_8_0.05
    # the pipeline's 5 restarts miss the counterexample 2 seeds in 3 and 50 find it in under a second
    attack_restarts: int = 50
    bab: bool = True
    bab_config: BaBConfig = field(default_factory=BaBConfig)
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


def multineuron_constraints(dp: DeepPoly, config: MNBaBConfig, deadline: float = math.inf
                            ) -> dict[int, LayerConstraints]:
    """Constraints over groups of unstable ReLUs of every layer, for one input box (N = 1).

    Layers (and groups) not reached by the ``deadline`` get none: fewer constraints, still sound.
    """
    plain = DeepPoly(dp.net, dp.lower, dp.upper)  # default slopes for the octahedral queries
    plain.bounds, plain.upper_lines = dp.bounds, dp.upper_lines
    directions = octahedral_directions(config.k).to(dp.lower)  # (D, k)
    out = {}
    for relu in dp.net.relu_nodes:
        if time.monotonic() > deadline:
            break
        pre = dp.net.nodes[relu].inputs[0]
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
    with torch.no_grad():
        bound = dp.bound(C)
    # input splitting bounds every sub-box afresh: the root's optimised slopes would not reach them, and on ACAS
    # Xu the root's 20 steps took 0.7-1.9 s of instances decided in 1-7 s, for no fewer sub-boxes
    if not decided(bound) and config.alpha_iterations > 0 and relu_split and time.monotonic() < deadline:
        stats["stage"] = "alpha"
        bound = torch.maximum(bound, dp.optimize(C, config.alpha_iterations, config.lr_alpha, intermediate=True,
                                                 done=stop_by(deadline, decided)))
    if not decided(bound) and config.multineuron and relu_split and time.monotonic() < deadline:
        stats["stage"] = "multineuron"
        now = time.monotonic()
        dp.constraints = multineuron_constraints(dp, config, now + config.multineuron_share * (deadline - now))
        stats["multineuron_constraints"] = sum(len(c) for c in dp.constraints.values())
        dp.gamma = {r: C.new_zeros(1, C.shape[1], len(c)) for r, c in dp.constraints.items()}
        dp.intermediate_gamma = config.multineuron_intermediate
        if dp.gamma:
            bound = torch.maximum(bound, dp.optimize(C, config.gamma_iterations, config.lr_alpha,
                                                     intermediate=config.multineuron_intermediate,
                                                     done=stop_by(deadline, decided),
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
    margins' sum in every pass before. The passes stop once
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

    skip: set[int] = set()
    while True:
        gains = tighten(dp, search, stop, objective, focus, skip)
        skip |= {node for node, gain in gains.items() if gain < config.intermediate_bab_drop}
        stats["intermediate_passes"] = stats.get("intermediate_passes", 0) + 1
        best = torch.maximum(best, dp.optimize(C, config.alpha_iterations, config.lr_alpha, intermediate=False,
                                               done=stop_by(deadline, lambda b: bool((margins(b) > 0).all())),
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
    stats: dict = {}
    input_split = config.bab and splits_input(config, lower.numel())
    start = time.monotonic()
    n_clauses = int(clause.max()) + 1
    C, d, clause = C.unsqueeze(0), d.unsqueeze(0), clause.to(C.device)

    def margins_of(bound: Tensor) -> Tensor:  # (n_clauses,)
        return clause_margins(bound, d, clause, n_clauses)[0]

    def decided(bound: Tensor) -> bool:
        return bool((margins_of(bound) > 0).all())

    dp, bound = root_bounds(net, lower, upper, C, config, deadline, decided, relu_split=not input_split,
                            stats=stats)
    stats["root_time_s"] = time.monotonic() - start
    margins = margins_of(bound)
    stats["root_margin"] = float(margins.min())
    if bool((margins > 0).all()):
        return BaBResult("certified", stats=stats)
    if time.monotonic() > deadline:
        return BaBResult("timeout", stats=stats)
    # input splitting probes every batch of sub-boxes for counterexamples (faces, PGD), where the restarts over
    # the whole box miss ACAS Xu's: on 1_3 prop_2 50 restarts fail in 2.9 s, the search finds one in 1.1 s
    if attack is not None and config.bab and not input_split:
        stats["stage"] = "attack"
        found = attack(deadline)
        if found is not None:
            return BaBResult("falsified", found, stats)
    if not input_split and config.intermediate_bab_share > 0 and time.monotonic() < deadline:
        stats["stage"] = "intermediate_bab"
        bound = tighten_root(dp, C, bound, margins_of, config, deadline, stats)
        margins = margins_of(bound)
        stats["tightened_margin"] = float(margins.min())
        if bool((margins > 0).all()):
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
        if margins[k] > 0:
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
    rows = torch.nonzero(margins[clause] <= 0).flatten()
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
    root = Subproblems(
        bounds={dp.net.nodes[r].inputs[0]: dp.bounds[dp.net.nodes[r].inputs[0]] for r in relus},
        split={r: torch.zeros(1, *dp.net.shapes[r], dtype=torch.int8, device=C.device) for r in relus},
        alpha={r: params[("alpha", r)][:, rows] for r in relus if ("alpha", r) in params},
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
