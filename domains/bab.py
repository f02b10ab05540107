"""Branch-and-bound over ReLU splits with multi-neuron constraints: MN-BaB (Ferrari et al. 2022).

A subproblem restricts some unstable ReLUs to one linear piece (split s = +1:
x >= 0, y = x; s = -1: x <= 0, y = 0). Its lower bound comes from one
back-substitution of the property rows through the network in which

- split neurons are exact (their pre-activation bounds are clamped at 0) and
  the split constraints ``s x >= 0`` enter with multipliers beta >= 0;
- split Sigmoid / Tanh neurons have narrowed input bounds [l, u], and their
  relaxations are rebuilt from them; the bounds ``x - l >= 0``, ``u - x >= 0``
  of every such neuron enter with multipliers beta >= 0 too;
- unsplit unstable neurons use the triangle upper line and the slope alpha;
- multi-neuron constraints ``a x + b y + c <= 0`` of groups of ReLUs (computed
  once at the root, valid in every subproblem) enter with multipliers gamma >= 0.

Every choice of (alpha, beta, gamma) gives a sound bound; they are optimised by
projected Adam, children starting where their parent's optimisation stopped
(the bound kept is the best seen, the multipliers passed on are the last):
progress that needs more steps than one batch gives then accumulates over
generations instead of restarting from the best values each time. Intermediate
bounds are recomputed from the split layer on, with the root's intermediate
slopes. Subproblems are processed in batches (one batch dimension), best-first
from a queue kept as stacked tensors, depth-first once the queue is full.

Memory: with ``max_memory`` the queue holds at most ``max_memory // row_bytes``
subproblems (``row_bytes``: the bytes of one subproblem's tensors); with
``batch_memory`` a batch holds only as many subproblems as the optimisation of
their children fits in it. Near that
cap the search goes depth-first and pops only as many subproblems as their
children may fill (at least one); if the children left open after bounding
still do not fit, the clause stops with ``unknown`` (``stats["stopped"] =
"memory"``) instead of growing.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nncert.domains import decide
from nncert.domains.activations import SShaped
from nncert.domains.alpha import AlphaDeepPoly, NeuronSlopes, StopBy
from nncert.domains.backsub import argmin_on_box, concretize
from nncert.domains.box import Bounds
from nncert.domains.milp import CERTIFY_TOL, SplitLP, unsupported_op
from nncert.domains.network import Network, ReLU
from nncert.domains.pgd import pgd_maximize
from nncert.domains.pool import Batch, Pool


@dataclass
class LayerConstraints:
    """Multi-neuron constraints ``a . x_G + b . y_G + c <= 0`` of one ReLU layer, shared by all subproblems.

    idx: (H, k) flat neuron indices of each constraint's group; a, b: (H, k); c: (H,)
    """

    idx: Tensor
    a: Tensor
    b: Tensor
    c: Tensor
    _placed: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return self.idx.shape[0]

    def spread(self, gamma: Tensor, coef: str, shape: tuple[int, ...]) -> Tensor:
        """sum_h gamma_h coef_h placed on the group's neurons: gamma (N, K, H) -> (N, K, *shape).

        coef: 'a', 'b' or 'abs' (|a| + |b|). One product of gamma with the
        coefficients placed on their neurons, a sparse CSR matrix (H, n) built
        once per layer (dense times CSR needs no transposed copy of gamma:
        up to 4x faster on CPU than the COO product, forward and backward).
        """
        n, k, h = gamma.shape
        key = (coef, math.prod(shape), gamma.dtype, gamma.device)
        if key not in self._placed:
            values = {"a": self.a, "b": self.b, "abs": self.a.abs() + self.b.abs()}[coef]
            rows = torch.arange(h, device=self.idx.device).repeat_interleave(self.idx.shape[1])
            placed = torch.sparse_coo_tensor(torch.stack([rows, self.idx.reshape(-1)]), values.reshape(-1),
                                             (h,) + key[1:2], check_invariants=True).coalesce()
            with warnings.catch_warnings():  # torch calls its CSR support beta
                warnings.simplefilter("ignore", UserWarning)
                self._placed[key] = placed.to(gamma).to_sparse_csr()
        return torch.mm(gamma.reshape(n * k, h), self._placed[key]).reshape(n, k, *shape)

    def per_neuron(self, gamma: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Active-constraint weight of each neuron: sum_h gamma_h (|a_h| + |b_h|): (N, K, H) -> (N, K, *shape)."""
        return self.spread(gamma, "abs", shape)


class SplitDeepPoly(AlphaDeepPoly):
    """Bounds of a batch of subproblems with split (beta) and multi-neuron (gamma) multipliers.

    The multi-neuron constraints of a layer also tighten the intermediate
    bounds of the layers after it (as PRIMA's refinement does) once
    ``intermediate_gamma`` is set: while optimising, every refined node then
    gets its own multipliers ``inter_gamma[(start, relu)]`` (N, 2K, H), like
    its slopes. On mnist_fc 256x4 prop_5_0.05 the layer-0 constraints alone
    raise the LP lower bounds of layer-1 neurons by 5% of their width, about
    what 2 s of HiGHS MILP per neuron gains.
    """

    def __init__(self, net, lower, upper, constraints: dict[int, LayerConstraints] | None = None):
        super().__init__(net, lower, upper)
        self.constraints = constraints or {}
        self.split: dict[int, Tensor] = {}  # relu -> (N, *s) in {-1, 0, +1}
        self.beta: dict[int, Tensor] = {}  # relu -> (N, K, *s), S-shaped in bounded -> (N, K, 2, *s); >= 0
        self.bounded: set[int] = set()  # S-shaped nodes whose input bounds enter the final bound with beta
        self.gamma: dict[int, Tensor] = {}  # relu -> (N, K, H) >= 0
        self.intermediate_gamma = False  # whether optimising creates inter_gamma
        self.inter_gamma: dict[tuple[int, int], Tensor] = {}  # (start, relu) -> (N, 2K, H) >= 0
        self.coefficients: dict[int, Tensor] = {}  # activation -> A at its output in the last final pass

    def multipliers(self, start: int, relu: int, A: Tensor) -> Tensor | None:
        """gamma of ``relu``'s constraints in the back-substitution of A (N, K, *s) from ``start``, if any."""
        if start == self.output:
            return self.gamma.get(relu)
        key = (start, relu)
        if key not in self.inter_gamma and self.create_alpha and self.intermediate_gamma and relu in self.constraints:
            self.inter_gamma[key] = A.new_zeros(*A.shape[:2], len(self.constraints[relu])).requires_grad_(True)
        return self.inter_gamma.get(key)

    def activation_backward(self, start: int, node: int, A: Tensor) -> tuple[Tensor, Tensor]:
        """As DeepPoly; in the final bound, a node in ``bounded`` adds ``-beta_l (x - l) - beta_u (u - x) <= 0``
        (its input bounds hold on the subproblem's region: they are the split constraints of split neurons)."""
        A_x, const = super().activation_backward(start, node, A)
        if start != self.output:
            return A_x, const
        self.coefficients[node] = A.detach()
        if node in self.bounded and node not in self.beta and self.create_alpha:
            self.beta[node] = A.new_zeros(*A.shape[:2], 2, *A.shape[2:]).requires_grad_(True)
        if node in self.beta:
            lo, hi = (t.unsqueeze(1) for t in self.bounds[self.net.nodes[node].inputs[0]])
            finite = torch.isfinite(lo) & torch.isfinite(hi)  # an infinite bound is no constraint
            beta_l, beta_u = (torch.where(finite, self.beta[node][:, :, j], 0.0) for j in (0, 1))
            A_x = A_x - beta_l + beta_u
            const = const + (beta_l * torch.where(finite, lo, 0.0) - beta_u * torch.where(finite, hi, 0.0)
                             ).flatten(2).sum(-1)
        return A_x, const

    def relu_backward(self, start: int, relu: int, A: Tensor) -> tuple[Tensor, Tensor]:
        """As DeepPoly, plus gamma * (a x + b y + c) <= 0, and -beta * s x <= 0 in the final bound."""
        shape = self.net.shapes[relu]
        cons, gamma = self.constraints.get(relu), self.multipliers(start, relu, A)
        if gamma is not None:
            A = A + cons.spread(gamma, "b", shape)
        if start == self.output:
            self.coefficients[relu] = A.detach()
        A_x, const = super().relu_backward(start, relu, A)
        if gamma is not None:
            A_x = A_x + cons.spread(gamma, "a", shape)
            const = const + gamma @ cons.c.to(A)
        if start == self.output and relu in self.beta:
            A_x = A_x - self.beta[relu] * self.split[relu].unsqueeze(1)
        return A_x, const

    def rows_chunkable(self, node: int) -> bool:
        return super().rows_chunkable(node) and all(start != node for start, _ in self.inter_gamma)

    def intermediate_parameters(self) -> list[tuple[str, Tensor]]:
        return super().intermediate_parameters() + [("gamma", g) for g in self.inter_gamma.values()]

    def detach_parameters(self) -> None:
        super().detach_parameters()
        self.inter_gamma = {key: g.detach() for key, g in self.inter_gamma.items()}

    def final_parameters(self) -> dict[tuple, Tensor]:
        params = super().final_parameters()
        params.update({("beta", relu): b for relu, b in self.beta.items()})
        params.update({("gamma", relu): g for relu, g in self.gamma.items()})
        return params

    def set_final_parameters(self, params: dict[tuple, Tensor]) -> None:
        super().set_final_parameters(params)
        for (kind, relu), value in params.items():
            if kind in ("beta", "gamma"):
                getattr(self, kind)[relu] = value

    def project(self) -> None:
        super().project()
        for t in (*self.beta.values(), *self.gamma.values(), *self.inter_gamma.values()):
            t.clamp_(min=0.0)


@dataclass
class Subproblems(Batch):
    """A batch of subproblems as stacked tensors; every field has the batch as its first dim.

    bounds: pre-activation node of every split node (:func:`split_nodes`) -> (lo, hi) (N, *s); split, gamma:
    relu node -> (N, *s) / (N, K, H); beta: relu node -> (N, K, *s), S-shaped split node -> (N, K, 2, *s);
    alpha: activation node -> its final bound's parameters (N, K, *p); lower: (N, K) row bounds; depth: (N,);
    spec: (N,) which row set of the search's C and d the subproblem bounds.
    """

    bounds: dict[int, Bounds]
    split: dict[int, Tensor]
    alpha: dict[int, Tensor]
    beta: dict[int, Tensor]
    gamma: dict[int, Tensor]
    lower: Tensor
    depth: Tensor
    spec: Tensor
    score: dict[int, Tensor] = field(default_factory=dict)  # split node -> (N, n) branching scores
    backup: dict[int, Tensor] = field(default_factory=dict)  # split node -> (N, n) second candidates' scores

    def branchable(self) -> Tensor:
        """Whether a neuron worth splitting is left (N,); the others are solved exactly."""
        if not self.score:  # a network without ReLUs or S-shaped activations
            return torch.zeros(len(self.lower), dtype=torch.bool, device=self.lower.device)
        return torch.cat(list(self.score.values()), 1).amax(1) >= 0


@dataclass
class BaBConfig:
    # subproblems branched together (their children are bounded together); the measured defaults of this
    # config: benchmarks/README.md, "MN-BaB defaults and what measured them"
    batch_size: int = 128
    iterations: int = 10  # optimisation steps per batch of children
    lr_alpha: float = 0.1
    lr_beta: float = 0.1
    lr_gamma: float = 0.001  # see MNBaBConfig.lr_gamma
    # 'babsr', or 'acs' (MN-BaB's active-constraint score, BaBSR fallback): BaBSR needs far fewer subproblems
    branching: str = "babsr"
    max_queue: int = 20000  # beyond this many open subproblems, go depth-first
    max_memory: int | None = None  # bytes the open subproblems may take (None: no cap); see the module doc
    batch_memory: int | None = None  # bytes the optimisation of one batch's children may take (None: no cap)
    max_depth: int = 1000  # a guard: fully split subproblems are solved exactly before this
    recompute_intermediate: bool = True  # refine the bounds of layers after the split (else only clamp)
    # split Sigmoid and Tanh neurons too (False: only ReLUs, whose fully split subproblems then end unknown on
    # such networks: the ablation of benchmarks/nonrelu.py)
    split_activations: bool = True
    # filtered smart branching: the top candidates of each score tried per split (1: take the best score)
    fsb_candidates: int = 8
    attack_seeds: int = 8  # per batch, bound minimisers refined by PGD into counterexample candidates
    attack_steps: int = 10
    # per batch, up to lp_checks open children whose bound did not rise above their parent's (worst first) are
    # checked by the LP relaxation of the MILP encoding with their splits fixed (domains.milp.SplitLP; 0: never),
    # each for at most lp_time s, while the checks have taken at most lp_share of the search's time; only for
    # networks of at most lp_max_neurons ReLUs (the encoding is built once per clause). Off by default: it
    # prunes most children it checks but proved no mnist_fc instance more and slowed the proved ones
    lp_checks: int = 0
    lp_share: float = 0.25
    lp_time: float = 2.0
    lp_max_neurons: int = 20000


def split_nodes(net: Network, activations: bool = True) -> list[int]:
    """The nodes branch-and-bound splits: ReLUs on the sign of their input and, with ``activations``, S-shaped
    activations (Sigmoid, Tanh) at a point of their input's interval
    (:meth:`~domains.activations.SShaped.split_point`)."""
    kinds = ReLU | SShaped if activations else ReLU
    return [i for i, node in enumerate(net.nodes) if isinstance(node.op, kinds)]


def preactivation_bias(net, node: int, like: Tensor) -> Tensor:
    """The constant term of an affine node, its output at zero inputs (*shape); zero for the input node."""
    inputs = [like.new_zeros(1, *net.shapes[i]) for i in net.nodes[node].inputs]
    if not inputs:
        return like.new_zeros(net.shapes[node])
    with torch.no_grad():
        return net.nodes[node].op.forward(*inputs)[0]


@dataclass
class BaBResult:
    status: str  # 'certified' | 'falsified' | 'timeout' | 'unknown'
    counterexample: Tensor | None = None
    stats: dict = field(default_factory=dict)


class BranchAndBound:
    """Branch-and-bound over neuron splits for row sets C (S, K, n_out), d (S, K).

    A ReLU split fixes the sign of its input (the split constraint enters
    with a multiplier beta); a split of a Sigmoid or Tanh neuron cuts its
    input's interval [l, u] at a point p into [l, p] and [p, u], and each
    child's relaxation is rebuilt from its narrowed bounds (f is convex or
    concave on each part once p = 0, where the lines are far tighter).
    Splitting S-shaped neurons never makes a subproblem exact, so a search on
    a network with them is not complete in finite time; every ``certified``
    it returns is sound.

    :meth:`run` searches one clause of one property (S = 1): the clause is
    excluded from a subproblem once some row has ``C y > d`` on all of it;
    ``is_counterexample`` (B, *in) -> (B,) decides candidate inputs. Each
    subproblem bounds the rows of its ``spec``, so several searches can share
    one batch (:mod:`domains.intermediate_bab`: one per neuron bound).
    """

    def __init__(self, root: SplitDeepPoly, C: Tensor, d: Tensor, config: BaBConfig,
                 is_counterexample: Callable[[Tensor], Tensor], deadline: float):
        self.root, self.C, self.d, self.config = root, C, d, config
        self.is_counterexample = is_counterexample
        self.deadline = deadline
        self.net = root.net
        self.relus = root.net.relu_nodes
        self.nodes = split_nodes(root.net, config.split_activations)
        self.pre = {r: root.net.nodes[r].inputs[0] for r in self.nodes}
        self.stats = {"subproblems": 0, "batches": 0, "max_queue": 0, "pruned_infeasible": 0, "pruned_by_branching": 0}
        self.root_slopes = NeuronSlopes.of(root)
        self.lp: SplitLP | None = None  # built on first use
        self.started, self.lp_seconds = time.monotonic(), 0.0
        self.bias = {r: preactivation_bias(self.net, self.pre[r], root.lower).flatten() for r in self.relus}

    # -- bounding ---------------------------------------------------------------------------------

    def domain(self, sub: Subproblems) -> SplitDeepPoly:
        """The bounding problem of a batch: its input box, multipliers and constraints (bounds not computed)."""
        n = len(sub)
        lower = self.root.lower.expand(n, *self.root.lower.shape[1:])
        upper = self.root.upper.expand(n, *self.root.upper.shape[1:])
        dp = SplitDeepPoly(self.net, lower, upper, self.root.constraints)
        # intermediate bounds of each child's own unstable neurons use the root's optimised slopes and are
        # intersected with the parent's bounds; only the final bound has per-subproblem multipliers
        dp.alpha = {(dp.output, r): a for r, a in sub.alpha.items()}
        dp.fixed = self.root_slopes
        dp.split, dp.beta, dp.gamma = sub.split, sub.beta, sub.gamma
        dp.bounded = {node for node in self.nodes if node not in self.relus}
        return dp

    def refined_bounds(self, sub: Subproblems, refine_from: Tensor) -> dict[int, Bounds]:
        """The pre-activation bounds of ``sub`` with those from node ``refine_from`` (N,) on recomputed.

        A subproblem's bounds before its newest split are those its ancestors
        computed, so each group of subproblems that split in the same layer is
        refined from there on only (one back-substitution per group).
        """
        bounds = dict(sub.bounds)
        last = max(self.pre.values(), default=-1)
        for start in refine_from.unique().tolist():
            if start > last:
                continue
            rows = torch.nonzero(refine_from == start).flatten()
            part = self.domain(sub.select(rows))
            with torch.no_grad():
                part.compute_intermediate_bounds(known={node: (b[0][rows], b[1][rows]) for node, b in bounds.items()},
                                                 refine_from=start)
            bounds = {node: (lo.index_copy(0, rows, part.bounds[node][0]), hi.index_copy(0, rows, part.bounds[node][1]))
                      for node, (lo, hi) in bounds.items()}
        return bounds

    def bound(self, sub: Subproblems, refine_from: Tensor | int, iterations: int
              ) -> tuple[Subproblems, Tensor, Tensor]:
        """Recompute intermediate bounds from node ``refine_from`` (N,) on and optimise the final multipliers.

        Returns the updated subproblems, a feasibility mask (N,) and the
        candidate inputs (N, K, *in) that minimise each row's linear bound.
        """
        dp = self.domain(sub)
        refine_from = torch.as_tensor(refine_from, device=sub.depth.device).expand(len(sub))
        with torch.no_grad():
            dp.compute_intermediate_bounds(known=self.refined_bounds(sub, refine_from),
                                           refine_from=len(self.net.nodes))
        C, d = self.C[sub.spec], self.d[sub.spec]

        def closed(best: Tensor) -> bool:
            return bool(decide.proved(decide.margins(best, d).max(1).values).all())

        # children continue from the last step, not from the best multipliers: on mnist_fc 256x4 prop_8_0.03
        # the open subproblems of one clause sat at their ancestors' bound for 60+ generations (their regions
        # were empty: LP-infeasible, dual bound unbounded) since no 10-step run beat the bound it started from
        # and each restarted from there; 50 steps prove them, and so do a few generations that carry on
        row_lower = dp.optimize(C, iterations=iterations, lr=self.config.lr_alpha, intermediate=False,
                                done=StopBy(self.deadline, closed),
                                lr_of={"beta": self.config.lr_beta, "gamma": self.config.lr_gamma}, keep_best=False)
        with torch.no_grad():
            A_in, const = dp.backsubstitute(dp.output, C)  # records the coefficients for branching
            candidates = argmin_on_box(A_in, dp.lower, dp.upper)
            # a child's region lies inside its parent's: the parent's bound holds too
            row_lower = torch.maximum(torch.maximum(row_lower, const + concretize(A_in, dp.lower, dp.upper)),
                                      sub.lower)
        params = dp.final_parameters()
        of_kind = {kind: {node: p for (k, node), p in params.items() if k == kind} for kind in ("alpha", "beta")}
        score, backup = self.scores(dp)
        new = Subproblems(
            bounds={node: dp.bounds[node] for node in self.pre.values()}, split=sub.split,
            alpha=of_kind["alpha"] or sub.alpha, beta=of_kind["beta"],
            gamma={r: params[("gamma", r)] for r in sub.gamma},
            lower=row_lower, depth=sub.depth, spec=sub.spec, score=score, backup=backup)
        return new, self.feasible(dp), candidates

    def feasible(self, dp: SplitDeepPoly) -> Tensor:
        """False for subproblems whose bounds cross somewhere by more than rounding: their region is empty (N,)."""
        ok = torch.ones(dp.lower.shape[0], dtype=torch.bool, device=dp.lower.device)
        for node in self.pre.values():
            lo, hi = dp.bounds[node]
            ok &= ~decide.empty(lo, hi).flatten(1).any(1)
        return ok

    def quick_margin(self, sub: Subproblems) -> Tensor:
        """Clause margin (N,) from one back-substitution with the current multipliers and clamped bounds."""
        dp = self.domain(sub)
        with torch.no_grad():
            dp.compute_intermediate_bounds(known=sub.bounds, refine_from=len(self.net.nodes))
            rows = dp.linear_lower(dp.output, self.C[sub.spec])
        margin = decide.margins(rows, self.d[sub.spec]).max(1).values
        return torch.where(self.feasible(dp), margin, decide.empty_margin(margin))

    def scores(self, dp: SplitDeepPoly) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """Branching scores of every neuron of every split node (N, n), -1 where there is nothing to split:
        (primary, backup); see :meth:`relu_scores` and :meth:`curve_scores`."""
        primary, backup = {}, {}
        for node in self.nodes:
            score = self.relu_scores if isinstance(self.net.nodes[node].op, ReLU) else self.curve_scores
            primary[node], backup[node] = score(dp, node)
        return primary, backup

    def relu_scores(self, dp: SplitDeepPoly, r: int) -> tuple[Tensor, Tensor]:
        """Scores of ReLU ``r``'s neurons (N, n), -1 for stable or split ones: (primary, backup).

        A is y's coefficient in the final bound, ``y <= s (x - l)`` the upper
        line (s = u / (u - l)). The backup is what the line's offset costs the
        bound, ``(-A)+ s (-l)``; BaBSR's score (Bunel et al. 2020) adds how the
        bound moves in the worse child when ``y = s x`` becomes ``y = x`` or
        ``y = 0``, with x approximated by its bias b: ``A b (1 - s)`` or ``-A b s``.
        MN-BaB's active-constraint score (``acs``) weighs each neuron by the
        multipliers of the multi-neuron constraints it lies in, BaBSR where none is active.
        """
        lo, hi = (t.flatten(1) for t in dp.bounds[self.pre[r]])
        unstable = (lo < 0) & (hi > 0)
        A = dp.coefficients[r].flatten(2)  # (N, K, n)
        slope, intercept = (t.flatten(1) for t in dp.upper_lines[r])  # y <= slope x + intercept
        offset = A.clamp(max=0).neg() * intercept.unsqueeze(1)  # (N, K, n) >= 0
        slope = slope.unsqueeze(1)
        bias_A = A * self.bias[r]
        score = (offset + torch.minimum(bias_A * (1 - slope), -bias_A * slope)).abs().mean(1)
        if self.config.branching == "acs" and r in dp.gamma:
            active = dp.constraints[r].per_neuron(dp.gamma[r], self.net.shapes[r]).flatten(2).sum(1)
            score = torch.where(active.amax(1, keepdim=True) > 1e-6, active, score)
        # the offset (then the relaxation's width) also breaks ties, and decides when all else vanishes
        offset_score = offset.mean(1) + 1e-6 * intercept
        return (torch.where(unstable, score + 1e-6 * offset_score, torch.full_like(score, -1.0)),
                torch.where(unstable, offset_score, torch.full_like(score, -1.0)))

    def curve_scores(self, dp: SplitDeepPoly, node: int) -> tuple[Tensor, Tensor]:
        """Scores of S-shaped ``node``'s neurons (N, n), -1 where splitting gains nothing (both the same).

        At most what the relaxation costs the bound: ``A+ g_l + (-A)+ g_u``
        averaged over the rows, with g_l, g_u the largest distances of the
        lower and the upper line from f on [l, u]; in the units of a ReLU's
        backup score (what its upper line's offset costs), so both kinds of
        neurons are ranked together, and the filtered smart branching tries
        the best candidates of either.
        """
        op = self.net.nodes[node].op
        lo, hi = dp.bounds[self.pre[node]]
        below, above = op.gaps(lo, hi, op.relax(lo, hi, dp.alpha.get((dp.output, node))))
        A = dp.coefficients[node].double()
        score = (A.clamp(min=0) * below - A.clamp(max=0) * above).mean(1).flatten(1).to(lo.dtype)
        score = torch.where(op.splittable(lo, hi).flatten(1), score, torch.full_like(score, -1.0))
        return score, score

    # -- branching ---------------------------------------------------------------------------------

    def decide(self, sub: Subproblems) -> tuple[Tensor, Tensor]:
        """The neuron to split in each subproblem, as a flat index over all split nodes (N,), and a cheap
        clause margin of each of its children (2N, in the order of :meth:`children`; -inf if not bounded).

        The primary score ranks the candidates; with ``fsb_candidates`` k > 1
        the top k of each score are tried (filtered smart branching, De Palma
        et al. 2021): each candidate's two children get one cheap bound (the
        parent's multipliers, no refinement), and the candidate whose better
        child is best wins. Pruning one child at once beats lifting both a little.
        """
        flat = torch.cat([sub.score[r] for r in self.nodes], dim=1)  # (N, total)
        k = min(self.config.fsb_candidates, flat.shape[1])
        if k <= 1:
            choice = flat.argmax(1)
            return choice, torch.full((2 * len(choice),), -torch.inf, dtype=self.d.dtype, device=choice.device)
        backup = torch.cat([sub.backup[r] for r in self.nodes], dim=1)
        top = torch.cat([flat.topk(k, dim=1).indices, backup.topk(k, dim=1).indices], 1)  # (N, 2k)
        # a few candidates at a time: the trials take no more memory than a batch of children
        margins, n = [], len(sub)
        for chunk in top.T.split(max(1, self.config.batch_size // n)):  # (c, N) each
            trials = self.children(sub.repeat(len(chunk)), chunk.reshape(-1))  # 2 * c * N, candidate-major
            margins.append(self.quick_margin(trials).view(2, len(chunk), n))
        margin = torch.cat(margins, 1)  # (2, 2k, N): both children of every candidate
        valid = flat.gather(1, top).T >= 0  # candidates that really are unstable, unsplit neurons
        best = torch.where(valid, margin.amax(0), torch.full_like(valid, -torch.inf, dtype=margin.dtype)).argmax(0)
        picked = margin.gather(1, best.view(1, 1, n).expand(2, 1, n)).reshape(2 * n)
        return top.gather(1, best.unsqueeze(1)).squeeze(1), picked

    def locate(self, sub: Subproblems, choice: Tensor) -> tuple[Tensor, Tensor]:
        """Flat neuron indices over all split nodes (N,) as (position in ``self.nodes``, index in its node)."""
        offsets = torch.tensor([0, *[sub.score[r].shape[1] for r in self.nodes]], device=choice.device).cumsum(0)
        layer = torch.searchsorted(offsets[1:], choice.contiguous(), right=True)
        return layer, choice - offsets[layer]

    def children(self, sub: Subproblems, choice: Tensor) -> Subproblems:
        """Both children of each subproblem splitting neuron ``choice`` (N,): the lower part of its input's
        interval first (a ReLU inactive), then the upper part (active)."""
        layer, index = (t.repeat(2) for t in self.locate(sub, choice))
        n = len(sub)
        sign = torch.cat([-torch.ones(n, dtype=torch.int8), torch.ones(n, dtype=torch.int8)]).to(choice.device)
        out = sub.repeat(2)
        for li, node in enumerate(self.nodes):
            rows = torch.nonzero(layer == li).flatten()
            if len(rows) == 0:
                continue
            cols, upper_part = index[rows], sign[rows] > 0
            op = self.net.nodes[node].op
            shape = out.bounds[self.pre[node]][0].shape
            lo, hi = (t.flatten(1).clone() for t in out.bounds[self.pre[node]])
            if isinstance(op, ReLU):
                split = out.split[node].flatten(1).clone()
                split[rows, cols] = sign[rows]
                out.split[node] = split.view_as(out.split[node])
                point = torch.zeros_like(lo[rows, cols])
            else:
                point = op.split_point(lo[rows, cols], hi[rows, cols])
            lo[rows[upper_part], cols[upper_part]] = torch.maximum(lo[rows[upper_part], cols[upper_part]],
                                                                   point[upper_part])
            hi[rows[~upper_part], cols[~upper_part]] = torch.minimum(hi[rows[~upper_part], cols[~upper_part]],
                                                                     point[~upper_part])
            out.bounds[self.pre[node]] = (lo.view(shape), hi.view(shape))
            if not isinstance(op, ReLU) and node in out.alpha:  # the split neuron's lines start from its defaults
                params = out.alpha[node].flatten(3).clone()  # (2N, K, 2, n)
                params[rows, :, :, cols] = op.init_params(lo[rows, cols], hi[rows, cols]).unsqueeze(1).to(params)
                out.alpha[node] = params.view_as(out.alpha[node])
        out.depth = out.depth + 1
        return out

    def branch(self, sub: Subproblems) -> tuple[Subproblems, Tensor, Tensor]:
        """Two children per subproblem, the first node whose bounds may change in each (2N,), and the children's
        cheap margins from choosing the split (2N,; > 0: the clause is already excluded there)."""
        choice, margin = self.decide(sub)
        children, refine_from = self.split(sub, choice)
        if not self.config.recompute_intermediate:  # the split neurons' own bounds are clamped, nothing refined
            refine_from = torch.full_like(refine_from, len(self.net.nodes))
        return children, refine_from, margin

    def split(self, sub: Subproblems, choice: Tensor) -> tuple[Subproblems, Tensor]:
        """:meth:`children`, and the node after the pre-activation each child's split changed (2N,)."""
        after_split = torch.tensor([self.pre[r] + 1 for r in self.nodes], device=choice.device)
        return self.children(sub, choice), after_split[self.locate(sub, choice)[0]].repeat(2)

    # -- search ------------------------------------------------------------------------------------

    def run(self, root: Subproblems) -> BaBResult:
        """Search until every subproblem is certified, a counterexample is found, or the deadline passes.

        A subproblem is done when some row's lower bound exceeds its d (the
        clause is excluded there) or its region is empty.
        """
        queue = Pool(root, self.margin, self.config.max_memory)
        self.stats.update(queue.stats())
        queue.push(root)
        while len(queue):
            self.stats["max_queue"] = max(self.stats["max_queue"], len(queue))
            if time.monotonic() > self.deadline:
                return BaBResult("timeout", stats=self.stats)
            batch = queue.take(self.batch_size(), self.config.max_queue)
            if int(batch.depth.max()) >= self.config.max_depth:
                return BaBResult("unknown", stats=self.stats)
            branchable = batch.branchable()
            if not bool(branchable.all()):
                leaf = self.solve_leaves(batch.select(~branchable))
                if leaf is not None:
                    return leaf
                batch = batch.select(branchable)
                if len(batch) == 0:
                    continue
            children, refine_from, trial = self.branch(batch)
            # children the branching trial already excluded (or found empty) need no bounding
            self.stats["subproblems"] += len(children)
            closed = decide.proved(trial)
            self.stats["pruned_by_branching"] += int(closed.sum())
            children, refine_from = children.select(~closed), refine_from[~closed]
            if len(children) == 0:
                continue
            inherited = self.margin(children)  # the parents' margins
            children, feasible, candidates = self.bound(children, refine_from, self.config.iterations)
            self.stats["batches"] += 1
            found = self.check(candidates, feasible)
            if found is not None:
                return BaBResult("falsified", found, self.stats)
            margin = self.lp_check(children, feasible, self.margin(children), inherited)
            self.stats["pruned_infeasible"] += int((~feasible).sum())
            keep = feasible & ~decide.proved(margin)
            if int(keep.sum()) > queue.room():
                self.stats["stopped"] = "memory"
                return BaBResult("unknown", stats=self.stats)
            if bool(keep.any()):
                queue.push(children.select(keep))
        return BaBResult("certified", stats=self.stats)

    def batch_size(self) -> int:
        """Subproblems per batch: at most ``batch_size``, and with ``batch_memory`` as many as the optimisation of
        their two children each fits in it (at least one)."""
        if self.config.batch_memory is None:
            return self.config.batch_size
        per_child = self.root.optimization_bytes(self.root.output, self.C.shape[1])
        return max(1, min(self.config.batch_size, self.config.batch_memory // (2 * per_child)))

    def lp_check(self, children: Subproblems, feasible: Tensor, margin: Tensor, inherited: Tensor) -> Tensor:
        """Clause margins (N,), raised to the LP bound for up to ``lp_checks`` open children that did not improve
        on their parent, worst first (+inf for an empty region).

        Such children are typically empty regions whose back-substituted bound
        cannot show it (their parent's bound carries over, so the search
        would split them on): on mnist_fc 256x4 prop_10_0.05 every sampled one
        was, and the LP says so in 0.06-0.45 s.
        """
        if (self.config.lp_checks <= 0 or unsupported_op(self.net) is not None
                or sum(math.prod(self.net.shapes[r]) for r in self.relus) > self.config.lp_max_neurons):
            return margin
        flat = torch.nonzero(feasible & ~decide.proved(margin) & (margin <= inherited)).flatten()
        flat = flat[margin[flat].argsort()][:self.config.lp_checks]
        if len(flat) == 0:
            return margin
        if self.lp is None:
            self.lp = SplitLP(self.net, self.root.lower[0], self.root.upper[0],
                              {node: self.root.bounds[node] for node in self.pre.values()}, self.C[0], self.d[0])
        margin = margin.clone()
        for i in flat.tolist():
            now = time.monotonic()
            left = self.deadline - now
            if left <= 0 or self.lp_seconds > self.config.lp_share * (now - self.started):
                break
            split = {self.pre[r]: s[i].flatten().cpu().numpy() for r, s in children.split.items()}
            bounds = {node: (lo[i].cpu(), hi[i].cpu()) for node, (lo, hi) in children.bounds.items()}
            bound = self.lp.margin(split, bounds, min(self.config.lp_time, left))
            self.lp_seconds += time.monotonic() - now
            # the LP (float64, HiGHS's tolerances) proves the clause, or the region empty (+inf)
            lp = decide.empty_margin(margin[i]) if bound > CERTIFY_TOL else margin[i]
            margin[i] = torch.maximum(margin[i], lp)
            self.stats["lp_checks"] = self.stats.get("lp_checks", 0) + 1
            self.stats["lp_pruned"] = self.stats.get("lp_pruned", 0) + int(bound > CERTIFY_TOL)
        return margin

    def margin(self, sub: Subproblems) -> Tensor:
        """Each subproblem's clause margin from its row bounds (N,): ``decide.proved`` once the clause is excluded
        there."""
        return decide.margins(sub.lower, self.d[sub.spec]).max(1).values

    def solve_leaves(self, leaves: Subproblems) -> BaBResult | None:
        """Fully split subproblems are LPs (no unstable ReLU left): solve them exactly.

        Their MaxPools are encoded exactly too (a binary per window input);
        with a Sigmoid or Tanh (all of whose neurons are then too narrow to
        split further) there is no exact solver, and the search ends unknown.
        Returns a final result (counterexample, timeout or undecidable) or None
        if every leaf is certified.
        """
        from nncert.domains.milp import milp_verify

        if unsupported_op(self.net) is not None:
            self.stats["stopped"] = "leaf without an exact solver"
            return BaBResult("unknown", stats=self.stats)

        clause = torch.zeros(self.C.shape[1], dtype=torch.long)
        for i in range(len(leaves)):
            known = {node: (lo[i:i + 1], hi[i:i + 1]) for node, (lo, hi) in leaves.bounds.items()}
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return BaBResult("timeout", stats=self.stats)
            result = milp_verify(self.net, self.root.lower[0], self.root.upper[0], self.C[0], self.d[0], clause,
                                 timeout=remaining, known=known)
            self.stats["exact_leaves"] = self.stats.get("exact_leaves", 0) + 1
            if result.status == "falsified" and bool(self.is_counterexample(result.counterexample[None])[0]):
                return BaBResult("falsified", result.counterexample, self.stats)
            if result.status != "certified":
                return BaBResult("timeout" if result.status == "timeout" else "unknown", stats=self.stats)
        return None

    def check(self, candidates: Tensor, feasible: Tensor) -> Tensor | None:
        """A concrete input violating the clause, if one is found near the bounds' minimisers (N, K, *in).

        The minimisers are checked as they are, then the most promising ones
        (lowest clause margin) seed a short PGD over the whole input box.
        """
        flat = candidates[feasible].reshape(-1, *candidates.shape[2:])
        if len(flat) == 0:
            return None
        with torch.no_grad():
            margin = (self.net(flat) @ self.C[0].T - self.d[0]).amax(1)
        seeds = flat[margin.argsort()[:self.config.attack_seeds]]
        if self.config.attack_steps > 0:
            lower = self.root.lower.expand_as(seeds)
            seeds, _ = pgd_maximize(lambda x: -(self.net(x) @ self.C[0].T - self.d[0]).amax(1), lower,
                                    self.root.upper.expand_as(seeds), steps=self.config.attack_steps,
                                    step_size=0.1, x0=seeds, stop=lambda best: best >= 0)
        for points in (flat, seeds):
            hits = self.is_counterexample(points)
            if bool(hits.any()):
                return points[hits][0]
        return None
