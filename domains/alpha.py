"""alpha-CROWN: DeepPoly with optimisable lower ReLU slopes (Xu et al. 2021).

Any slope alpha in [0, 1] gives a valid lower line ``y >= alpha x`` for an
unstable ReLU, so every choice yields a sound bound. Slopes are kept per
(start node, ReLU node): one tensor (N, K, *relu_shape) for each bound being
computed (K rows of the final spec, or the 2K rows +-x of an intermediate
layer's refined neurons), and optimised by projected Adam on the final bound.
Intermediate bounds are recomputed in every step with their own slopes, for
the neurons the bounds before the first step leave unstable (the others stay
stable: every step's bounds are intersected with those), and the best bounds
seen are kept (each step's bounds are valid).

Memory: per-row slopes of a refined node take (2K rows) x (neurons of every
earlier ReLU), and autograd keeps the coefficients of those rows at every node
on the way, so on a conv net they grow with the square of its width. With
``max_memory`` the optimisation first estimates these bytes per refined node
(:meth:`AlphaDeepPoly.optimization_bytes`) and optimises the slopes of the
nodes that fit, cheapest first; the others are ``frozen``: their bounds stay
those of the pass before (valid), computed without gradients in row chunks.
If not even the final bound's slopes fit, the stage is skipped.

The other activations' relaxation parameters (LeakyReLU's lower slope,
Sigmoid's and Tanh's line slopes, see :mod:`domains.activations`) are kept in
``alpha`` too, keyed (start, activation node), shaped (N, K, *p) from the op's
``init_params`` and projected by its ``project``; every value is sound.

Subclasses add more multipliers of the final bound (beta, gamma) through
:meth:`final_parameters` and :meth:`project`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nncert.domains.box import Bounds
from nncert.domains.deeppoly import DeepPoly
from nncert.domains.network import Activation


def tightest(a: dict[int, Bounds], b: dict[int, Bounds]) -> dict[int, Bounds]:
    """Node-wise intersection of two sets of valid bounds."""
    return {i: (torch.maximum(a[i][0], b[i][0]), torch.minimum(a[i][1], b[i][1])) if i in b else a[i] for i in a}


class StopBy:
    """A ``done`` for :meth:`AlphaDeepPoly.optimize`: ``done(best)``, or the next step would end past the
    deadline (judged by the duration of the last one, by ``first_step`` seconds before the first), so the
    optimisation ends by the deadline, not after it. ``step`` is the last step's duration (seconds)."""

    def __init__(self, deadline: float, done: Callable[[Tensor], bool] | None = None, first_step: float = 0.0):
        self.deadline, self.done, self.step = deadline, done, first_step
        self.last: float | None = None

    def __call__(self, best: Tensor) -> bool:
        now = time.monotonic()
        if self.last is not None:
            self.step = now - self.last
        self.last = now
        return (self.done is not None and self.done(best)) or now + self.step > self.deadline


@dataclass
class NeuronSlopes:
    """Fixed lower slopes of one intermediate node's bounds, looked up by neuron.

    For a batch whose refined neurons are among those the slopes were
    optimised for (the children of a branch-and-bound root: their bounds only
    tighten). slopes: (2K, *relu_shape), the rows bounding K neurons from
    below, then from above; row: (n,) each neuron's row among the K, -1 if none.
    """

    slopes: Tensor
    row: Tensor

    @staticmethod
    def of(dp: AlphaDeepPoly) -> dict[tuple[int, int], NeuronSlopes]:
        """The optimised intermediate slopes of a single-sample ``dp``, keyed (start, relu)."""
        out = {}
        for (start, relu), a in dp.alpha.items():
            if start == dp.output or start not in dp.refine_idx:
                continue
            idx = dp.refine_idx[start][0]
            row = torch.full((math.prod(dp.net.shapes[start]),), -1, dtype=torch.long, device=idx.device)
            row[idx] = torch.arange(len(idx), device=idx.device)
            out[(start, relu)] = NeuronSlopes(a[0], row)
        return out

    def pick(self, neurons: Tensor) -> tuple[Tensor, Tensor]:
        """Slopes of the rows +x_i then -x_i for ``neurons`` (N, c): (N, 2c, *s), and where known (N, 2c, 1...)."""
        r = self.row[neurons]
        k = self.slopes.shape[0] // 2
        slopes = torch.cat([self.slopes[r.clamp(min=0)], self.slopes[k + r.clamp(min=0)]], 1)
        known = torch.cat([r, r], 1) >= 0
        return slopes, known.reshape(*known.shape, *[1] * (slopes.dim() - 2))


# Elements per row that optimising keeps, for every ReLU neuron the back-substitution passes (the slope, its
# gradient and Adam's two moments, the masks and products autograd saves), and that one row's coefficients
# take at the widest node while they pass it. Measured on a conv net fed by a 16-dim input (peak RSS of the
# optimisation of each node's bounds alone; estimated / measured): 0.38 / 0.35 GB, 0.79 / 0.73 GB, 52 / 50 MB.
RELU_COPIES = 8
PASSING_COPIES = 4


class AlphaDeepPoly(DeepPoly):
    """DeepPoly whose lower slopes ``alpha[(start, relu)]`` (N, K, *s) can be optimised."""

    def __init__(self, net, lower, upper):
        super().__init__(net, lower, upper)
        self.alpha: dict[tuple[int, int], Tensor] = {}
        self.create_alpha = False  # while optimising, missing slopes become parameters on first use
        self.fixed: dict[tuple[int, int], NeuronSlopes] = {}  # intermediate slopes looked up by neuron
        self.max_memory: int | None = None  # bytes the optimisation's tensors may take (None: no cap)
        self.frozen: set[int] = set()  # refined nodes whose slopes the last optimisation left out: they did not fit

    def lower_slope(self, start: int, relu: int, A: Tensor) -> Tensor:
        default = super().lower_slope(start, relu, A)
        key = (start, relu)
        if start in self.frozen:
            return default
        if key in self.fixed and self.window is not None:
            slopes, known = self.fixed[key].pick(self.window)
            lo, hi = self.pre_bounds(relu)
            return torch.where(((lo < 0) & (hi > 0)).unsqueeze(1) & known, slopes, default)
        if key not in self.alpha:
            if not self.create_alpha:
                return default
            self.alpha[key] = default.expand(A.shape).detach().clone().requires_grad_(True)
        lo, hi = self.pre_bounds(relu)
        unstable = ((lo < 0) & (hi > 0)).unsqueeze(1)
        return torch.where(unstable, self.alpha[key], default)

    def activation_params(self, start: int, node: int, A: Tensor) -> Tensor | None:
        key = (start, node)
        if key not in self.alpha and self.create_alpha:
            init = self.net.nodes[node].op.init_params(*self.bounds[self.net.nodes[node].inputs[0]])
            if init is None:
                return None
            rows = init.unsqueeze(1).expand(A.shape[0], A.shape[1], *init.shape[1:])
            self.alpha[key] = rows.detach().clone().requires_grad_(True)
        return self.alpha.get(key)

    def rows_chunkable(self, node: int) -> bool:
        """Slopes are per row: rows may be chunked only while no slope of ``node``'s bounds exists."""
        return (node in self.frozen or not self.create_alpha) and all(start != node for start, _ in self.alpha)

    def refine(self, node: int, lo: Tensor, hi: Tensor):
        """While optimising, a frozen node keeps the bounds it has (its reference bounds, intersected in)."""
        if self.create_alpha and node in self.frozen:
            return lo, hi
        return super().refine(node, lo, hi)

    # -- memory -------------------------------------------------------------------------------------

    def optimization_bytes(self, start: int, rows: int) -> int:
        """Estimated bytes of optimising the slopes of ``rows`` rows back-substituted from ``start``."""
        shapes, n = self.net.shapes, self.lower.shape[0]
        relus = sum(math.prod(shapes[r]) for r in self.net.relu_nodes if r < start)
        widest = max(math.prod(shape) for shape in shapes[:start + 1])
        return n * rows * self.lower.element_size() * (RELU_COPIES * relus + PASSING_COPIES * widest)

    def has_slopes(self, node: int) -> bool:
        """Whether the bounds of ``node`` depend on a ReLU's lower slope (else optimising cannot move them)."""
        return any(r < node for r in self.net.relu_nodes)

    def plan_memory(self, rows: int, intermediate: bool) -> bool:
        """Chooses ``frozen`` under ``max_memory`` for an optimisation of ``rows`` final rows (and, with
        ``intermediate``, of the refined nodes' slopes); False if not even the final bound's slopes fit.

        Nodes before every ReLU are frozen (no slope moves their bounds); nodes that have slopes already are
        kept; the others are taken cheapest first: each costs bytes in proportion to its rows, so the narrow
        layers near the output come before the wide convolutions whose per-row slopes grow with the square of
        their width.
        """
        self.frozen = {node for node in self.refine_idx if not self.has_slopes(node)}
        if self.max_memory is None:
            return True
        left = self.max_memory - self.optimization_bytes(self.output, rows)
        if left < 0 or not intermediate:
            return left >= 0
        costs = sorted((not any(start == node for start, _ in self.alpha), self.optimization_bytes(node, 2 * k), node)
                       for node, k in ((node, idx.shape[1]) for node, idx in self.refine_idx.items())
                       if node not in self.frozen)
        for new, cost, node in costs:
            if new and cost > left:
                self.frozen.add(node)
            else:
                left -= cost
        return True

    # -- multipliers of the final bound, (N, K, ...) each ------------------------------------------------

    def final_parameters(self) -> dict[tuple, Tensor]:
        return {("alpha", relu): a for (start, relu), a in self.alpha.items() if start == self.output}

    def set_final_parameters(self, params: dict[tuple, Tensor]) -> None:
        for (kind, relu), value in params.items():
            if kind == "alpha":
                self.alpha[(self.output, relu)] = value

    def intermediate_parameters(self) -> list[tuple[str, Tensor]]:
        """(kind, tensor) of the multipliers of the intermediate bounds."""
        return [("alpha", a) for (start, _), a in self.alpha.items() if start != self.output]

    def detach_parameters(self) -> None:
        """Cut every multiplier off the optimisation's graph."""
        self.alpha = {key: a.detach() for key, a in self.alpha.items()}

    def project(self) -> None:
        """Back into the feasible set after a gradient step."""
        for (_, node), a in self.alpha.items():
            op = self.net.nodes[node].op
            if isinstance(op, Activation):
                a.copy_(op.project(a))
            else:
                a.clamp_(0.0, 1.0)

    # -- optimisation -------------------------------------------------------------------------------

    def optimize(self, C: Tensor, iterations: int = 20, lr: float = 0.1, intermediate: bool = True,
                 done: Callable[[Tensor], bool] | None = None, lr_of: dict[str, float] | None = None,
                 keep_best: bool = True) -> Tensor:
        """Maximise the lower bounds of ``C y`` over the multipliers; returns the best bounds (N, K).

        With ``intermediate`` the slopes of the refined intermediate bounds are
        optimised too (each pass recomputes those bounds); otherwise the
        current intermediate bounds stay fixed and only the final bound's
        multipliers move. The run ends early once ``done(best bounds)``.
        Afterwards ``self.bounds`` holds the tightest
        intermediate bounds seen and the final multipliers are the best per row
        (without ``keep_best``: where the last step left them, a start for more steps).
        ``lr`` is the slopes' learning rate; ``lr_of`` sets it per kind of final
        multiplier ("beta", "gamma": Adam moves every entry by about its learning
        rate per step, so multipliers whose useful values are far below 1 need a
        smaller one).
        """
        best = self.bound(C).detach()  # without optimisation; also fixes the refined index sets
        if intermediate:  # the passes below intersect with these bounds; rows with slopes keep their order
            self.drop_stable_rows([node for node in self.refine_idx if all(start != node for start, _ in self.alpha)])
        if not self.plan_memory(C.shape[1], intermediate):
            return best
        reference = dict(self.bounds)
        best_bounds = dict(reference)
        self.create_alpha = True
        self.linear_lower(self.output, C)  # creates the final slopes
        for key, value in self.final_parameters().items():
            self.set_final_parameters({key: value.detach().clone().requires_grad_(True)})
        best_params = {key: value.detach().clone() for key, value in self.final_parameters().items()}
        optimizer = None
        with torch.enable_grad():
            for _ in range(iterations):
                if done is not None and done(best):
                    break
                if intermediate:
                    self.compute_intermediate_bounds(known=reference)
                lb = self.linear_lower(self.output, C)
                if optimizer is None:
                    optimizer = Adam(*self._parameters(intermediate, lr, lr_of or {}))
                self._keep_best(lb.detach(), best, best_params)
                if intermediate:
                    best_bounds = tightest(best_bounds, {i: (lo.detach(), hi.detach())
                                                         for i, (lo, hi) in self.bounds.items()})
                if not lb.requires_grad:  # no parameters at all (e.g. only MaxPools)
                    break
                optimizer.zero_grad()
                loss = -lb.sum()
                if intermediate:
                    loss = loss + self.unstable_width()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    self.project()
        self.create_alpha = False
        self.detach_parameters()
        if keep_best:
            self.set_final_parameters(best_params)
        if intermediate:
            self.compute_intermediate_bounds(known=best_bounds, refine_from=len(self.net.nodes))
        return torch.maximum(best, self.bound(C).detach())

    def unstable_width(self) -> Tensor:
        """Sum of the back-substituted widths of the refined neurons still unstable, before intersecting
        with interval bounds: the gradient reaches every row's slopes, also where the interval is tighter."""
        total = 0.0
        for node, (lo, hi) in self.refined.items():
            idx = self.refine_idx[node].expand(lo.shape[0], -1)
            cur_lo, cur_hi = (t.flatten(1).gather(1, idx) for t in self.bounds[node])
            total = total + ((hi - lo) * ((cur_lo < 0) & (cur_hi > 0))).sum()
        return total

    def _parameters(self, intermediate: bool, lr: float, lr_of: dict[str, float]
                    ) -> tuple[list[Tensor], list[float]]:
        """The tensors to optimise and the learning rate of each."""
        params = [(value, lr_of.get(kind, lr)) for (kind, _), value in self.final_parameters().items()]
        if intermediate:
            params += [(value, lr_of.get(kind, lr)) for kind, value in self.intermediate_parameters()]
        return [p for p, _ in params], [r for _, r in params]

    def _keep_best(self, lb: Tensor, best: Tensor, best_params: dict[tuple, Tensor]) -> None:
        """Row-wise: remember the bound and the final multipliers where this pass improved."""
        improved = lb > best
        for key, value in self.final_parameters().items():
            mask = improved.reshape(*improved.shape, *[1] * (value.dim() - 2))
            best_params[key] = torch.where(mask, value.detach(), best_params[key])
        best.copy_(torch.maximum(best, lb))


class Adam:
    """Adam (Kingma & Ba, 2015), as torch.optim.Adam computes it, on a list of tensors with one learning rate each.

    torch.optim's first use imports torch._dynamo, seconds of start-up that would
    be charged to the first property's timeout.
    """

    def __init__(self, params: list[Tensor], lr: list[float], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        correction1, correction2 = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        for p, lr, m, v in zip(self.params, self.lr, self.m, self.v):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / correction2).add_(self.eps), value=-lr / correction1)
