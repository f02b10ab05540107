"""Branch-and-bound over the input box: input splitting for low-dimensional inputs.

When the input has few dimensions (ACAS Xu: 5), the relaxation error comes
from the width of the input box much more than from any single ReLU: halving
the box along one dimension tightens every unstable neuron at once. A
subproblem here is a sub-box [lo, hi] of the input box; a batch of sub-boxes
is bounded together by DeepPoly (the batch dimension is the sub-box): by
:mod:`domains.lowdim` (forward linear bounds, then back-substitution of the
neurons still unstable, all sub-boxes' rows stacked), or, with alpha steps on
the final slopes or ops it does not support, by :class:`AlphaDeepPoly`. Each
sub-box starts from its parent's intermediate bounds (it lies inside it).
All open clauses of the property are searched together (rows C y <= d
grouped by ``clause``, as in :mod:`domains.mnbab`): they share the
intermediate bounds, which cost most, and a counterexample to any clause ends
the search. A sub-box is done once
every clause has a row whose lower bound exceeds its d. Every other sub-box is

- checked concretely: its centre, the corners minimising each row's linear
  lower bound, a few random points biased towards the sub-box's faces, and a
  few PGD steps from the most promising of these points. Within each linear
  region of a ReLU network a linear margin is smallest at a vertex, so
  counterexamples often lie on faces of the input box (ACAS Xu's do), where
  uniform samples and PGD's interior steps rarely land;
- split in half along the dimension of highest smear score
  ``sum_{rows k of open clauses} |A_in[k, j]| * (hi_j - lo_j)`` (the change of the linear
  bound across the box caused by dimension j, Wang et al. 2018 / ERAN) among the
  dimensions of wide reach (``reach_ratio``), or, with ``branching='width'``,
  along its widest dimension.

Sub-boxes are processed best-first (lowest property margin, where counterexamples
live), depth-first once the queue exceeds ``max_queue`` so memory stays bounded;
``max_memory`` caps the pool of open sub-boxes as in :mod:`domains.bab`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nncert.domains import decide
from nncert.domains.alpha import AlphaDeepPoly
from nncert.domains.bab import BaBResult
from nncert.domains.backsub import argmin_on_box, concretize
from nncert.domains.box import bound_linear as box_bound_linear
from nncert.domains.lowdim import backsubstitute_rows, input_sensitivity, lowdim_bounds, row_lower, supports
from nncert.domains.network import Network
from nncert.domains.pgd import pgd_maximize
from nncert.domains.pool import Batch, Pool


def clause_margins(lower: Tensor, d: Tensor, clause: Tensor, n_clauses: int) -> Tensor:
    """Per clause, the best row margin ``lb - d`` (:func:`domains.decide.margins`): (N, m) -> (N, n_clauses);
    ``decide.proved`` where excluded."""
    rows = decide.margins(lower, d)
    out = rows.new_full((rows.shape[0], n_clauses), -torch.inf)
    return out.scatter_reduce(1, clause.expand_as(rows), rows, reduce="amax")


@dataclass
class InputBaBConfig:
    batch_size: int = 512  # sub-boxes bounded together (children count twice)
    alpha_iterations: int = 0  # optimisation steps of the final slopes per batch (0: plain DeepPoly)
    lr_alpha: float = 0.1
    branching: str = "smear"  # 'smear' (|coefficient| x width over the violated rows) or 'width'
    max_queue: int = 200000  # beyond this many open sub-boxes, go depth-first
    max_memory: int | None = None  # bytes the open sub-boxes may take (None: no cap), as in domains.bab
    max_depth: int = 200  # a guard against splitting below the floating-point resolution
    order: str = "concrete"  # best-first by the smallest concrete margin found, or by the lower 'bound'
    samples: int = 4096  # random points per batch, spread over its open sub-boxes (see face_samples)
    attack_seeds: int = 8  # per batch, the lowest-margin points refined by PGD inside their sub-box
    attack_steps: int = 5
    # smear only among the dimensions whose reach (width x input_sensitivity) is at least 1/reach_ratio of the
    # widest's: a dimension the final linear bound is steep in can be too narrow for splitting it to shrink the
    # intermediate relaxations, where the bound's error is (ACAS Xu 4_7 prop_1: smear alone times out after
    # 15000 sub-boxes at depth 55, the widest reach alone takes 1800 sub-boxes, both together 1000)
    reach_ratio: float = 4.0
    inherit: bool = True  # children start from their parent's intermediate bounds (memory: 2 floats a neuron)


@dataclass
class Boxes(Batch):
    """A batch of sub-boxes: lo, hi (N, *in), lower (N, m) row bounds, depth (N,), key (N,) the best-first order,
    and ``known``: valid bounds (N, *shape[i]) of the pre-activation nodes i, the parent's (a child lies in it)."""

    lo: Tensor
    hi: Tensor
    lower: Tensor
    depth: Tensor
    key: Tensor
    known: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


@dataclass
class BoundedBoxes:
    """Bounds of a batch of sub-boxes: row lower bounds (N, m) and the rows' input coefficients (N, m, *in)."""

    lower: Tensor
    A_in: Tensor
    candidates: Tensor  # (N, m, *in): the corner minimising each row's linear bound
    known: dict[int, tuple[Tensor, Tensor]]  # the pre-activation bounds (N, *shape[i]) found on the way

    def select(self, index: Tensor) -> BoundedBoxes:
        known = {i: (lo[index], hi[index]) for i, (lo, hi) in self.known.items()}
        return BoundedBoxes(self.lower[index], self.A_in[index], self.candidates[index], known)


class InputBranchAndBound:
    """Input-splitting branch-and-bound for one property: rows C (1, m, n_out), d (1, m), clause (m,).

    Unsafe iff some clause k has ``C_j y <= d_j`` for all its rows j. lower,
    upper (1, *in): the input box. ``is_counterexample`` (B, *in) -> (B,)
    decides candidate inputs (a concrete check of the whole property).
    """

    def __init__(self, net: Network, lower: Tensor, upper: Tensor, C: Tensor, d: Tensor, clause: Tensor,
                 config: InputBaBConfig, is_counterexample: Callable[[Tensor], Tensor], deadline: float):
        self.net, self.lower, self.upper, self.C, self.d = net, lower, upper, C, d
        self.clause, self.n_clauses = clause, int(clause.max()) + 1
        self.config, self.is_counterexample, self.deadline = config, is_counterexample, deadline
        self.generator = torch.Generator().manual_seed(0)
        self.sensitivity = input_sensitivity(net).to(lower)
        self.stats: dict = {"split": "input", "boxes": 0, "batches": 0, "max_queue": 0, "max_depth": 0}

    def unbounded(self) -> dict[int, tuple[Tensor, Tensor]]:
        """No known bounds (-inf, inf) for the root's pre-activation nodes, or none at all if not ``inherit``."""
        if not self.config.inherit:
            return {}
        nodes = sorted({self.net.nodes[r].inputs[0] for r in self.net.relu_nodes})
        return {i: (torch.full((1, *self.net.shapes[i]), -torch.inf, dtype=self.d.dtype, device=self.d.device),
                    torch.full((1, *self.net.shapes[i]), torch.inf, dtype=self.d.dtype, device=self.d.device))
                for i in nodes}

    def property_margin(self, row_lower: Tensor) -> Tensor:
        """min over clauses of the best row margin: (N, m) -> (N,); > 0 means the sub-box is safe."""
        return clause_margins(row_lower, self.d, self.clause, self.n_clauses).amin(1)

    # -- bounding ---------------------------------------------------------------------------------

    def bound(self, boxes: Boxes) -> BoundedBoxes:
        """Linear bounds of the rows on every sub-box (plus optional alpha on the final slopes); never looser
        than the parent. Intermediate bounds by :func:`domains.lowdim.lowdim_bounds` where the network allows."""
        if supports(self.net) and self.config.alpha_iterations == 0:
            with torch.no_grad():
                return self.bound_stacked(boxes)
        n = len(boxes)
        C = self.C.expand(n, *self.C.shape[1:])
        dp = AlphaDeepPoly(self.net, boxes.lo, boxes.hi)
        with torch.no_grad():
            dp.compute_intermediate_bounds(boxes.known)
        row_lower = boxes.lower
        if self.config.alpha_iterations > 0:
            row_lower = torch.maximum(row_lower, dp.optimize(
                C, self.config.alpha_iterations, self.config.lr_alpha, intermediate=False,
                done=lambda best: bool(decide.proved(self.property_margin(best)).all())))
        with torch.no_grad():
            A_in, const = dp.backsubstitute(dp.output, C)
            linear = const + concretize(A_in, boxes.lo, boxes.hi)
            interval = box_bound_linear(self.net, boxes.lo, boxes.hi, C, dp.node_bounds())
            row_lower = torch.maximum(row_lower, torch.maximum(linear, interval))
        return BoundedBoxes(row_lower, A_in, argmin_on_box(A_in, boxes.lo, boxes.hi),
                            {i: dp.bounds[i] for i in boxes.known})

    def bound_stacked(self, boxes: Boxes) -> BoundedBoxes:
        """Forward intermediate bounds, then the rows of all sub-boxes back-substituted as one stack."""
        n, m = len(boxes), self.C.shape[1]
        found = lowdim_bounds(self.net, boxes.lo, boxes.hi, boxes.known)
        owner = torch.arange(n, device=self.C.device).repeat_interleave(m)
        A_in, const = backsubstitute_rows(self.net, len(self.net.nodes) - 1, self.C[0].repeat(n, 1), owner,
                                          found.lines)
        linear = row_lower(A_in, const, boxes.lo, boxes.hi, owner).view(n, m)
        interval = box_bound_linear(self.net, boxes.lo, boxes.hi, self.C.expand(n, *self.C.shape[1:]),
                                    found.node_bounds())
        A_in = A_in.view(n, m, *A_in.shape[1:])
        lower = torch.maximum(boxes.lower, torch.maximum(linear, interval))
        return BoundedBoxes(lower, A_in, argmin_on_box(A_in, boxes.lo, boxes.hi),
                            {i: found.bounds[i] for i in boxes.known})

    # -- branching --------------------------------------------------------------------------------

    def scores(self, boxes: Boxes, bounded: BoundedBoxes) -> Tensor:
        """Branching score of every input dimension (N, n_in)."""
        width = (boxes.hi - boxes.lo).flatten(1)  # (N, n_in)
        if self.config.branching == "width":
            return width
        excluded = decide.proved(clause_margins(bounded.lower, self.d, self.clause, self.n_clauses))  # (N, n_clauses)
        open_rows = ~excluded[:, self.clause].unsqueeze(-1)  # (N, m, 1)
        smear = (bounded.A_in.flatten(2).abs() * width.unsqueeze(1) * open_rows).sum(1)
        reach = width * self.sensitivity
        wide = reach >= reach.amax(1, keepdim=True) / self.config.reach_ratio
        # dimensions the bound ignores still shrink the intermediate relaxations: reach breaks ties
        return (smear + 1e-6 * reach) * wide

    @staticmethod
    def split(boxes: Boxes, dim: Tensor) -> Boxes:
        """Both halves (lower half first) of each sub-box along its dimension ``dim`` (N,)."""
        n, shape = len(boxes), (2 * len(boxes), *boxes.lo.shape[1:])
        rows = torch.arange(n, device=dim.device)
        lo, hi = boxes.lo.flatten(1), boxes.hi.flatten(1)
        mid = (lo[rows, dim] + hi[rows, dim]) / 2
        left_hi, right_lo = hi.clone(), lo.clone()
        left_hi[rows, dim] = mid
        right_lo[rows, dim] = mid
        return Boxes(torch.cat([lo, right_lo]).view(shape), torch.cat([left_hi, hi]).view(shape),
                     boxes.lower.repeat(2, 1), boxes.depth.repeat(2) + 1, boxes.key.repeat(2),
                     {i: (lo.repeat(2, *[1] * (lo.dim() - 1)), hi.repeat(2, *[1] * (hi.dim() - 1)))
                      for i, (lo, hi) in boxes.known.items()})

    # -- search -----------------------------------------------------------------------------------

    def run(self) -> BaBResult:
        """Search until every sub-box is certified, a counterexample is found, or the deadline passes.

        With ``max_memory``, the pool holds at most ``max_memory // row_bytes`` sub-boxes: near the cap
        the search pops only as many as their children may fill (at least one) and goes depth-first; if
        the children left open still do not fit, it stops with ``unknown`` (``stats["stopped"] = "memory"``).
        """
        todo = Boxes(self.lower, self.upper, torch.full_like(self.d, -torch.inf),
                     torch.zeros(1, dtype=torch.long, device=self.d.device), self.d.new_zeros(1), self.unbounded())
        queue = Pool(todo, lambda boxes: boxes.key, self.config.max_memory)
        self.stats.update(queue.stats())
        batch_time = 0.0  # of the last batch: the next one is not started if it would end past the deadline
        while True:
            started = time.monotonic()
            if started + batch_time > self.deadline:
                return BaBResult("timeout", stats=self.stats)
            bounded = self.bound(todo)
            self.stats["boxes"] += len(todo)
            self.stats["batches"] += 1
            margin = self.property_margin(bounded.lower)
            open_ = torch.nonzero(~decide.proved(margin)).flatten()
            if len(open_):
                kept, kept_bounds = todo.select(open_), bounded.select(open_)
                found, concrete = self.probe(kept, kept_bounds)
                if found is not None:
                    return BaBResult("falsified", found, self.stats)
                kept.lower, kept.known = kept_bounds.lower, kept_bounds.known
                kept.key = concrete if self.config.order == "concrete" else margin[open_]
                children = self.split(kept, self.scores(kept, kept_bounds).argmax(1))
                if len(children) > queue.room():
                    self.stats["stopped"] = "memory"
                    return BaBResult("unknown", stats=self.stats)
                queue.push(children)
            if not len(queue):
                return BaBResult("certified", stats=self.stats)
            self.stats["max_queue"] = max(self.stats["max_queue"], len(queue))
            todo = queue.take(self.config.batch_size, self.config.max_queue)
            depth = int(todo.depth.max())
            self.stats["max_depth"] = max(self.stats["max_depth"], depth)
            if depth > self.config.max_depth:
                return BaBResult("unknown", stats=self.stats)
            batch_time = time.monotonic() - started

    def probe(self, boxes: Boxes, bounded: BoundedBoxes) -> tuple[Tensor | None, Tensor]:
        """Concrete points of open sub-boxes: centres, bound minimisers, face samples, a short PGD from the best.

        Returns a counterexample (or None) and the smallest property margin
        found in each sub-box (N,), an upper bound on its true minimum.
        """
        samples = self.face_samples(boxes, max(1, self.config.samples // len(boxes)))
        points = torch.cat([((boxes.lo + boxes.hi) / 2).unsqueeze(1), bounded.candidates, samples], 1)
        per_box = points.shape[1]  # (N, per_box, *in)
        flat = points.flatten(0, 1)
        with torch.no_grad():
            margin = self.margin(flat)  # (N * per_box,)
        best = margin.view(-1, per_box).amin(1)
        found = self.confirmed(flat[margin <= 0])
        if found is not None or len(flat) == 0:
            return found, best
        if self.config.attack_steps <= 0:
            return None, best
        seeds = margin.argsort()[:self.config.attack_seeds]
        owner = seeds // per_box  # the sub-box each seed lies in
        x, loss = pgd_maximize(lambda x: -self.margin(x), boxes.lo[owner], boxes.hi[owner],
                               steps=self.config.attack_steps, step_size=0.2, x0=flat[seeds],
                               stop=lambda best: best >= 0)
        best = best.scatter_reduce(0, owner, -loss, reduce="amin")
        return self.confirmed(x[-loss <= 0]), best

    def confirmed(self, x: Tensor) -> Tensor | None:
        """The first of the candidates x (B, *in) that ``is_counterexample`` confirms, if any.

        Only points violating one of this search's clauses are passed (the
        caller's other clauses, if any, are excluded on the whole box).
        """
        if len(x) == 0:
            return None
        hits = self.is_counterexample(x)
        return x[hits][0] if bool(hits.any()) else None

    def face_samples(self, boxes: Boxes, k: int) -> Tensor:
        """k random points per sub-box (N, k, *in); each coordinate is at lo or hi w.p. 1/4 each, else uniform."""
        shape = (len(boxes), k, *boxes.lo.shape[1:])
        u = torch.rand(shape, generator=self.generator, dtype=boxes.lo.dtype).to(boxes.lo.device)
        t = ((u - 0.25) * 2).clamp(0.0, 1.0)  # P(t = 0) = P(t = 1) = 1/4, uniform in between
        return boxes.lo.unsqueeze(1) + t * (boxes.hi - boxes.lo).unsqueeze(1)

    def margin(self, x: Tensor) -> Tensor:
        """The property's margin at inputs x (B, *in) -> (B,); <= 0 violates some clause."""
        y = self.net(x).flatten(1)  # (B, n_out)
        return clause_margins(y @ self.C[0].T, self.d, self.clause, self.n_clauses).amin(1)
