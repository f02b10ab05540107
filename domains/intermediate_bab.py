"""Tighter intermediate bounds by branch-and-bound: a small search for each unstable neuron's bounds.

The lower bound of a pre-activation neuron x_i of node p is the value of a
verification problem on the network cut after p: min x_i over the input box
(and min -x_i for the upper bound). The root's bound of x_i is that search's
root; splitting ReLUs of the layers before p (:mod:`domains.bab`, split
constraints with multipliers beta) and taking the minimum over the open
leaves gives a bound at least as tight, valid whenever the search stops.

All these searches of one node run as one batch (each subproblem bounds the
row set ``spec`` of its neuron and sign); every round splits the ``width``
lowest leaves of each search. The peers tighten these bounds with a MILP
solver instead (MN-BaB's ``refine_via_milp``, alpha-beta-CROWN's
``bab-refine``, Gurobi).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nncert.domains import decide
from nncert.domains.bab import BaBConfig, BranchAndBound, SplitDeepPoly, Subproblems, split_nodes
from nncert.domains.box import Bounds
from nncert.domains.network import Network


@dataclass
class IntermediateBaBConfig:
    rounds: int = 5  # rounds of splitting per node
    width: int = 8  # leaves split per neuron bound and round
    # the searches of a node run in batches whose leaves take at most this many bytes
    max_memory: int = 1 << 30
    # the searches' subproblems: intermediate bounds of the cut network are not recomputed after a split (on
    # mnist_fc 256x4 prop_5_0.05 and 256x6 prop_0_0.05 recomputing them gives the same bounds, 25-35% slower)
    bab_config: BaBConfig = field(default_factory=lambda: BaBConfig(recompute_intermediate=False, fsb_candidates=1))


def cut_after(net: Network, node: int) -> Network:
    """The network whose output is ``node``'s (the nodes up to it, same indices)."""
    return Network(net.input_shape, [(n.op, n.inputs) for n in net.nodes[1:node + 1]])


def tighten_node(dp: SplitDeepPoly, node: int, config: IntermediateBaBConfig, deadline: float,
                 rows: Tensor | None = None) -> Bounds:
    """Bounds (1, *s) of pre-activation ``node`` of a single-sample ``dp`` by a search per unstable neuron and side.

    ``dp`` must have refined ``node`` (``dp.refine_idx[node]``, K neurons); the
    searches start from its multipliers for those rows (slopes, multi-neuron
    gamma), so their roots are the bounds ``dp`` has, and only the layers
    before ``node`` are split. ``rows`` (R,) picks the searches among dp's rows
    of the node, 0..2K-1: row r < K is the lower bound of neuron
    ``refine_idx[r]``, row K + r its upper bound (default: both sides of every
    unstable neuron). Bounds not reached by the ``deadline`` stay.
    """
    lo, hi = (t.flatten(1)[0] for t in dp.bounds[node])
    idx = dp.refine_idx[node][0]  # (K,) the neurons dp bounded by back-substitution, rows +x_i then -x_i
    if rows is None:
        unstable = torch.nonzero((lo[idx] < 0) & (hi[idx] > 0)).flatten()
        rows = torch.cat([unstable, unstable + len(idx)])
    net = cut_after(dp.net, node)
    root = SplitDeepPoly(net, dp.lower, dp.upper, {r: c for r, c in dp.constraints.items() if r < node})
    root.alpha = {key: a for key, a in dp.alpha.items() if key[0] < node}  # slopes of the earlier nodes' bounds
    root.refine_idx = {n: i for n, i in dp.refine_idx.items() if n < node}
    with torch.no_grad():
        root.compute_intermediate_bounds(known={n: b for n, b in dp.bounds.items() if n <= node},
                                         refine_from=node + 1)
    new_lo, new_hi = lo.clone(), hi.clone()
    if len(rows) > 0:
        leaves_per_row = 1 + 2 * config.rounds * config.width  # a search at its largest
        per_batch = max(1, config.max_memory // (_roots(dp, root, node, rows[:1]).row_bytes() * leaves_per_row))
        for part in rows.split(per_batch):
            if time.monotonic() > deadline:
                break
            lowest = _search(root, idx, part, _roots(dp, root, node, part), config, deadline)
            neurons, lower = idx[part % len(idx)], part < len(idx)  # rows min x_i, else min -x_i
            new_lo[neurons[lower]] = torch.maximum(new_lo[neurons[lower]], lowest[lower])
            new_hi[neurons[~lower]] = torch.minimum(new_hi[neurons[~lower]], -lowest[~lower])
    return new_lo.view_as(dp.bounds[node][0]), new_hi.view_as(dp.bounds[node][1])


def _roots(dp: SplitDeepPoly, root: SplitDeepPoly, node: int, rows: Tensor) -> Subproblems:
    """One unsplit subproblem per row ``rows`` (R,) of ``dp``'s bounds of ``node``, with the multipliers ``dp``
    optimised for those rows."""
    lo = root.lower
    net, n = root.net, len(rows)
    relus = net.relu_nodes

    def per_row(params: dict[tuple[int, int], Tensor], relu: int) -> Tensor:
        return params[(node, relu)][:, rows].transpose(0, 1)  # (R, 1, ...)

    return Subproblems(
        bounds={p: tuple(b.expand(n, *b.shape[1:]) for b in root.bounds[p]) for p in (net.nodes[r].inputs[0]
                                                                                      for r in split_nodes(net))},
        split={r: torch.zeros(n, *net.shapes[r], dtype=torch.int8, device=lo.device) for r in relus},
        alpha={r: per_row(dp.alpha, r) for r in relus if (node, r) in dp.alpha},
        beta={r: lo.new_zeros(n, 1, *net.shapes[r]) for r in relus},
        gamma={r: per_row(dp.inter_gamma, r) for r in relus if (node, r) in dp.inter_gamma},
        lower=lo.new_full((n, 1), -torch.inf), depth=torch.zeros(n, dtype=torch.long, device=lo.device),
        spec=torch.arange(n, device=lo.device))


def _search(root: SplitDeepPoly, idx: Tensor, rows: Tensor, leaves: Subproblems, config: IntermediateBaBConfig,
            deadline: float) -> Tensor:
    """Search the minimum of each row ``rows`` (R,) over ``root``'s network: row r < K (K = len(idx)) is +x of
    output neuron idx[r], row K + r is -x of idx[r]; one root subproblem each in ``leaves`` (spec 0..R-1).
    A neuron's searches stop once either proves it stable. Returns each search's lowest leaf bound (R,)."""
    n, k, shape = len(rows), len(idx), root.net.output_shape
    neuron = rows % k  # (R,) position in idx
    C = root.lower.new_zeros(n, 1, math.prod(shape))
    C[torch.arange(n), 0, idx[neuron]] = torch.where(rows < k, 1.0, -1.0).to(C)
    search = BranchAndBound(root, C.view(n, 1, *shape), root.lower.new_full((n, 1), torch.inf),
                            config.bab_config, lambda xs: torch.zeros(len(xs), dtype=torch.bool), deadline)
    leaves, _, _ = search.bound(leaves, refine_from=len(root.net.nodes), iterations=0)
    for _ in range(config.rounds):
        # a stable neuron's relaxation is exact whatever its bounds: on 256x6 prop_11_0.05 a 20 x 32 pass stabilises
        # 157 neurons of layer 5 in 6 s instead of 160 s
        lowest = _lowest(leaves, n)
        proved = neuron[decide.proved(decide.margins(lowest, 0.0))]
        stable = torch.zeros(k, dtype=torch.bool, device=idx.device).index_fill_(0, proved, True)
        pick = lowest_per_spec(leaves, config.width) & leaves.branchable() & ~stable[neuron[leaves.spec]]
        if not bool(pick.any()) or time.monotonic() > deadline:
            break
        children, refine_from, trial = search.branch(leaves.select(pick))
        keep = ~decide.proved(trial)  # the trial found the child empty (d = inf: no margin proves anything)
        children, feasible, _ = search.bound(children.select(keep), refine_from[keep], config.bab_config.iterations)
        leaves = Subproblems.cat([leaves.select(~pick), children.select(feasible)])
    lowest = _lowest(leaves, n)
    # a search whose leaves all turned out empty (only by rounding: its region is the input box's image) says nothing
    return torch.where(torch.isfinite(lowest), lowest, torch.full_like(lowest, -torch.inf))


def _lowest(leaves: Subproblems, n: int) -> Tensor:
    """Each of ``n`` searches' lowest leaf bound (n,); +inf for a search without leaves."""
    return leaves.lower.new_full((n,), torch.inf).scatter_reduce(0, leaves.spec, leaves.lower[:, 0], "amin")


def lowest_per_spec(sub: Subproblems, width: int) -> Tensor:
    """Mask (N,) of the ``width`` subproblems of lowest bound within each row set."""
    by_bound = sub.lower[:, 0].argsort(stable=True)
    order = by_bound[sub.spec[by_bound].argsort(stable=True)]  # by spec, then by bound
    spec = sub.spec[order]
    first = torch.searchsorted(spec, spec, right=False)  # where each spec's run starts
    rank = torch.arange(len(order), device=spec.device) - first
    mask = torch.zeros(len(order), dtype=torch.bool, device=spec.device)
    mask[order] = rank < width
    return mask


def tighten(dp: SplitDeepPoly, config: IntermediateBaBConfig, deadline: float,
            objective: Callable[[SplitDeepPoly], Tensor] | None = None, focus: float = 1.0,
            skip: Collection[int] = ()) -> dict[int, float]:
    """Tighten the refined intermediate bounds of a single-sample ``dp`` node by node, in place.

    Each node's searches see the earlier nodes' tightened bounds, and the
    bounds of the nodes after it are recomputed (with ``dp``'s multipliers).
    Nodes in ``skip``, and nodes before every ReLU (nothing to split), are
    not searched (their bounds are still recomputed from the earlier nodes').
    With an ``objective`` (what the bounds serve, e.g. the sum of the
    property's negative margins, <= 0, as a function of ``dp``'s final bound)
    and ``focus`` < 1, only the searches of highest :func:`priority` run, until they account for ``focus`` of the node's
    total priority. Returns, with an ``objective``, each searched
    node's gain: the share of the objective's distance to 0 that its
    searches closed (the later bounds recomputed from them); else {}.
    """
    gains = {}
    value = None if objective is None else _value(objective, dp)  # the objective before the node's searches
    for node in sorted(node for node in set(dp.refine_idx) - set(skip) if dp.has_slopes(node)):
        if time.monotonic() > deadline:
            break
        rows = None
        if objective is not None and focus < 1:
            rows = most_promising(priority(dp, node, objective), focus)
        dp.bounds[node] = tighten_node(dp, node, config, deadline, rows)
        with torch.no_grad():
            dp.compute_intermediate_bounds(known=dict(dp.bounds), refine_from=node + 1)
        if objective is not None:
            before, value = value, _value(objective, dp)
            gains[node] = (value - before) / max(-before, 1e-12)
    return gains


def _value(objective: Callable[[SplitDeepPoly], Tensor], dp: SplitDeepPoly) -> float:
    with torch.no_grad():
        return float(objective(dp))


def priority(dp: SplitDeepPoly, node: int, objective: Callable[[SplitDeepPoly], Tensor]) -> Tensor:
    """Per row of ``node``'s searches (2K,: lower bounds, then upper bounds of ``dp.refine_idx[node]``), what
    tightening that bound could give the ``objective``: its derivative with respect to the bound (``dp``'s
    multipliers fixed) times the room the bound has before the neuron turns stable (-lo, resp. hi); 0 for
    stable neurons.

    The derivative is taken with the later nodes' bounds recomputed from this one's by back-substitution,
    not intersected with tighter bounds they may have from searches: those would cut the paths through them,
    and a bound's largest effect is often on the later bounds (on 256x6 prop_11_0.05, stabilising layer 5
    lifts the worst margin from -57 to -6 through layer 6's bounds; the direct effect ranked other rows first).
    """
    known = dict(dp.bounds)
    leaf = tuple(t.detach().clone().requires_grad_(True) for t in known[node])
    earlier = {n: b for n, b in known.items() if n < node}
    with torch.enable_grad():
        dp.compute_intermediate_bounds(known={**earlier, node: leaf}, refine_from=node + 1)
        # autograd.grad, not backward: parameters of the network (a torch model's) get no .grad
        grads = torch.autograd.grad(objective(dp), leaf, allow_unused=True)
    with torch.no_grad():
        dp.compute_intermediate_bounds(known=known, refine_from=len(dp.net.nodes))
    idx = dp.refine_idx[node][0]
    lo, hi = (t.flatten()[idx] for t in known[node])
    d_lo, d_hi = (torch.zeros_like(t) if g is None else g for g, t in zip(grads, known[node]))
    d_lo, d_hi = d_lo.flatten()[idx], d_hi.flatten()[idx]
    unstable = (lo < 0) & (hi > 0)
    return torch.cat([d_lo.clamp(min=0) * -lo, (-d_hi).clamp(min=0) * hi]) * unstable.repeat(2)


def most_promising(score: Tensor, share: float) -> Tensor:
    """Indices of the highest positive scores (R,) that together make up ``share`` of the total (at least one)."""
    order = score.argsort(descending=True)
    total = score[order].cumsum(0)
    keep = order[:int((total < share * total[-1]).sum()) + 1]
    return keep[score[keep] > 0]
