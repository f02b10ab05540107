"""DeepPoly / CROWN: linear bounds by back-substitution to the input.

Every ReLU ``y = max(x, 0)`` with pre-activation bounds ``l < 0 < u`` is
relaxed by two lines (Singh et al. 2019, Zhang et al. 2018):

    upper:  y <= u / (u - l) * (x - l)                         (the triangle)
    lower:  y >= lambda * x,  lambda = 1 if u > -l else 0      (min-area choice)

Stable neurons are exact (identity or zero). Pre-activation bounds are
computed layer by layer: first by interval propagation from the tightest
bounds so far, then by back-substituting only the neurons that this leaves
unstable; both are intersected, so DeepPoly is never looser than Box. Nodes
whose interval bounds are already exact (one mixing affine op after the
input) are not back-substituted, and the rows of a back-substitution are
processed in chunks that bound its memory. Past ``deadline`` the remaining
chunks are not back-substituted: their neurons keep their interval bounds
(valid, looser), so a wide network's bounds end by the deadline.

The other activations (:class:`~domains.network.Activation`: LeakyReLU,
Sigmoid, Tanh, MaxPool) bring their own relaxation (``op.relax``); their
inputs are refined like a ReLU's where the relaxation is not exact.

Subclasses (alpha, beta, multi-neuron constraints) override ``lower_slope``,
``relu_backward`` or ``activation_params``; everything else is shared.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from nncert.domains.backsub import argmin_on_box, backsubstitute, concretize
from nncert.domains.box import Bounds, affine_bounds, op_bounds
from nncert.domains.box import bound_linear as box_bound_linear
from nncert.domains.network import Activation, Monotone, Network, ReLU


def triangle_upper(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Slope and intercept of the tightest linear upper bound of ReLU on [l, u].

    A neuron with a NaN bound is not stable: its line is NaN, so every bound it enters proves nothing."""
    unstable = ~((lower >= 0) | (upper <= 0))
    slope = torch.where(unstable, upper / (upper - lower).clamp_min(1e-12), (lower >= 0).to(lower))
    intercept = torch.where(unstable, -slope * lower, torch.zeros_like(lower))
    return slope, intercept


def min_area_lower_slope(lower: Tensor, upper: Tensor) -> Tensor:
    """DeepPoly's adaptive lower slope: 1 where u > -l (and for active neurons), else 0."""
    return ((upper > -lower) & (upper > 0)).to(lower)


def exact_by_intervals(net: Network) -> set[int]:
    """Nodes whose interval bounds are the exact range over the input box.

    A box stays a box under coordinate-wise ops, and one mixing affine op
    (Linear, Conv, AvgPool) of a box has exact interval bounds; a second
    mixing op, an Add of branches or an activation on the way loses exactness.
    """
    mixing = {0: 0}
    for i, node in enumerate(net.nodes[1:], start=1):
        nonlinear = isinstance(node.op, ReLU | Activation)
        own = 2 if nonlinear else 0 if node.op.coordinatewise else 2 if node.op.n_inputs > 1 else 1
        mixing[i] = max(mixing[j] for j in node.inputs) + own
    return {i for i, m in mixing.items() if m <= 1}


def unstable_indices(lower: Tensor, upper: Tensor, unstable: Tensor | None = None) -> Tensor:
    """Flat indices of unstable neurons, padded per row: (N, *s) -> (N, K), K = max count.

    ``unstable`` (N, *s) says which neurons are (default: ``lower < 0 < upper``).
    Rows with fewer unstable neurons repeat their first index (or 0); bounding
    a neuron twice, or a stable one, is harmless since results are intersected.
    The neurons of a feature map (C, H, W) come by position (row-major, channels
    within): a chunk of consecutive rows then covers a small window of the map,
    and back-substitution through a convolution transposes only that window.
    """
    unstable = ((lower < 0) & (upper > 0) if unstable is None else unstable).flatten(1)
    k = int(unstable.sum(1).max().item()) if unstable.numel() else 0
    neuron = torch.arange(unstable.shape[1], device=lower.device)
    position = neuron % math.prod(lower.shape[2:]) if lower.dim() == 4 else neuron
    # unstable neurons first, by position (the stable sort keeps the channels' order within one)
    order = torch.sort(position + (~unstable) * unstable.shape[1], dim=1, stable=True).indices[:, :k]
    count = unstable.sum(1, keepdim=True)
    first = order[:, :1] if k else order
    return torch.where(torch.arange(k, device=lower.device) < count, order, first)


class DeepPoly:
    """DeepPoly bounds of a network on a batch of input boxes.

    lower, upper: (N, *input_shape). ``bounds[i]`` holds the interval bounds of
    node i, (N, *shape[i]) each, after :meth:`compute_intermediate_bounds`.
    """

    def __init__(self, net: Network, lower: Tensor, upper: Tensor):
        self.net, self.lower, self.upper = net, lower, upper
        self.bounds: dict[int, Bounds] = {0: (lower, upper)}
        self.upper_lines: dict[int, tuple[Tensor, Tensor]] = {}
        self.refine_idx: dict[int, Tensor] = {}  # neurons bounded by back-substitution, fixed once chosen
        self.refined: dict[int, Bounds] = {}  # their back-substituted bounds before any intersection (N, K)
        self.pre_activations = {net.nodes[i].inputs[0] for i, node in enumerate(net.nodes)
                                if isinstance(node.op, ReLU | Activation)} - exact_by_intervals(net)
        self.chunk_elements = 1 << 20  # memory budget of one back-substitution (coefficient entries)
        self.window: Tensor | None = None  # in refine(): the neurons (N, c) whose bounds are being computed
        self.deadline = math.inf  # time.monotonic() after which no more rows are back-substituted
        self.output = len(net.nodes) - 1

    # -- relaxation ---------------------------------------------------------------------------------

    def pre_bounds(self, relu: int) -> Bounds:
        return self.bounds[self.net.nodes[relu].inputs[0]]

    def lower_slope(self, start: int, relu: int, A: Tensor) -> Tensor:
        """Lower-line slope for ``relu`` in the back-substitution of A from ``start``, broadcastable to A."""
        lo, hi = self.pre_bounds(relu)
        return min_area_lower_slope(lo, hi).unsqueeze(1)

    def relu_backward(self, start: int, relu: int, A: Tensor) -> tuple[Tensor, Tensor]:
        """Lower bound of ``A . y`` by relaxed ReLU lines: A (N, K, *s) -> (A on x, const (N, K))."""
        slope_up, intercept_up = self.upper_lines[relu]
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        A_x = pos * self.lower_slope(start, relu, A) + neg * slope_up.unsqueeze(1)
        return A_x, (neg * intercept_up.unsqueeze(1)).flatten(2).sum(-1)

    def activation_params(self, start: int, node: int, A: Tensor) -> Tensor | None:
        """Parameters of activation ``node``'s relaxation in the back-substitution of A from ``start``
        (None: its default relaxation)."""
        return None

    def activation_backward(self, start: int, node: int, A: Tensor) -> tuple[Tensor, Tensor]:
        """Lower bound of ``A . y`` by the relaxation of an :class:`Activation`: (A on its input, const (N, K))."""
        op = self.net.nodes[node].op
        relaxation = op.relax(*self.bounds[self.net.nodes[node].inputs[0]], self.activation_params(start, node, A))
        return relaxation.backward(A)

    def loose(self, node: int, lo: Tensor, hi: Tensor) -> Tensor:
        """Neurons of ``node`` (N, *s) whose bounds some consumer's relaxation is not exact for."""
        masks = [(lo < 0) & (hi > 0) if isinstance(self.net.nodes[c].op, ReLU) else self.net.nodes[c].op.loose(lo, hi)
                 for c in self.net.consumers[node] if isinstance(self.net.nodes[c].op, ReLU | Activation)]
        return torch.stack(masks).any(0)

    # -- bounds -------------------------------------------------------------------------------------

    def backsubstitute(self, start: int, A: Tensor) -> tuple[Tensor, Tensor]:
        """Input coefficients and constant (A_in, c) with ``A . x_start >= A_in . x + c``."""
        return backsubstitute(self.net, start, A, self.bounds, self.relu_backward, self.activation_backward)

    def linear_lower(self, start: int, A: Tensor) -> Tensor:
        """Lower bound of ``A . x_start`` over the input box: (N, K, *s) -> (N, K)."""
        A_in, const = self.backsubstitute(start, A)
        return const + concretize(A_in, self.lower, self.upper)

    def refine(self, node: int, lo: Tensor, hi: Tensor) -> Bounds:
        """Tighter bounds for the unstable neurons of ``node`` (N, *s) by back-substitution."""
        if node not in self.refine_idx:
            self.refine_idx[node] = unstable_indices(lo, hi, self.loose(node, lo, hi))
        n, k = lo.shape[0], self.refine_idx[node].shape[1]
        idx = self.refine_idx[node].expand(n, k)  # (N, K)
        if k == 0:
            return lo, hi
        size = lo[0].numel()
        widest = max(math.prod(shape) for shape in self.net.shapes[:node + 1])
        step = k if not self.rows_chunkable(node) else max(1, self.chunk_elements // (2 * n * widest))
        lowers, uppers = [], []  # (N, chunk) each: lower bounds of +x_i and of -x_i
        for part in idx.split(step, dim=1):
            if time.monotonic() > self.deadline:
                lowers.append(lo.flatten(1).gather(1, part))
                uppers.append(hi.flatten(1).gather(1, part))
                continue
            self.window = part
            eye = torch.zeros(n, part.shape[1], size, dtype=lo.dtype, device=lo.device)
            eye.scatter_(2, part.unsqueeze(-1), 1.0)
            bound = self.linear_lower(node, torch.cat([eye, -eye], 1).reshape(n, -1, *lo.shape[1:]))
            lowers.append(bound[:, :part.shape[1]])
            uppers.append(-bound[:, part.shape[1]:])
        self.window = None
        self.refined[node] = (torch.cat(lowers, 1), torch.cat(uppers, 1))
        new_lo = lo.flatten(1).scatter(1, idx, torch.maximum(self.refined[node][0], lo.flatten(1).gather(1, idx)))
        new_hi = hi.flatten(1).scatter(1, idx, torch.minimum(self.refined[node][1], hi.flatten(1).gather(1, idx)))
        return new_lo.view_as(lo), new_hi.view_as(hi)

    def drop_stable_rows(self, nodes) -> None:
        """Re-select the refined rows of ``nodes`` among the neurons their current bounds leave loose.

        For passes whose bounds are intersected with the current ones (``known``): bounds only tighten, so a
        neuron stable now stays stable and its row would bound it for nothing. The rows were chosen from the
        interval bounds before refinement, which on a residual net's Add leave 3-7 times more neurons
        unstable than the refined bounds do (benchmarks/results/conv_profile.md).
        """
        for node in nodes:
            lo, hi = self.bounds[node]
            self.refine_idx[node] = unstable_indices(lo, hi, self.loose(node, lo, hi))
            self.refined.pop(node, None)

    def rows_chunkable(self, node: int) -> bool:
        """Whether the back-substitution from ``node`` may be split into row chunks (no per-row state)."""
        return True

    def compute_intermediate_bounds(self, known: dict[int, Bounds] | None = None, refine_from: int = 1) -> None:
        """Bounds of every node: intervals from the tightest inputs, refined before each ReLU.

        ``known`` holds valid bounds of pre-activation nodes (e.g. a parent
        subproblem's, or a previous pass's) that are intersected in; only
        pre-activation nodes from ``refine_from`` on are refined by
        back-substitution, earlier ones keep their interval/known bounds.
        """
        known = known or {}
        self.bounds = {0: (self.lower, self.upper)}
        self.upper_lines = {}
        for i, node in enumerate(self.net.nodes[1:], start=1):
            if isinstance(node.op, ReLU):
                lo, hi = self.bounds[node.inputs[0]]
                self.upper_lines[i] = triangle_upper(lo, hi)
                self.bounds[i] = (torch.relu(lo), torch.relu(hi))
                continue
            if isinstance(node.op, Activation):  # relaxed when back-substituted, see activation_backward
                self.bounds[i] = node.op.bounds(*self.bounds[node.inputs[0]])
                continue
            if isinstance(node.op, Monotone):  # interval bounds only: back-substitution stops here
                self.bounds[i] = op_bounds(node.op, self.bounds[node.inputs[0]])
                continue
            lo, hi = affine_bounds(node.op, *(self.bounds[j] for j in node.inputs))
            if i in known:
                lo, hi = torch.maximum(lo, known[i][0]), torch.minimum(hi, known[i][1])
            if i in self.pre_activations and i >= refine_from:
                lo, hi = self.refine(i, lo, hi)
                if i in known:
                    lo, hi = torch.maximum(lo, known[i][0]), torch.minimum(hi, known[i][1])
            self.bounds[i] = (lo, hi)

    def bound(self, C: Tensor) -> Tensor:
        """Lower bounds of ``C y`` (C: (N, K, *output_shape)) -> (N, K).

        The back-substituted bound is intersected with the interval bound of
        ``C y`` over the same (refined) intermediate bounds: a single ReLU's
        linear lower line can be looser than its interval, and this keeps
        DeepPoly at least as tight as Box on the property too.
        """
        if len(self.bounds) < len(self.net.nodes):
            self.compute_intermediate_bounds()
        return torch.maximum(self.linear_lower(self.output, C),
                             box_bound_linear(self.net, self.lower, self.upper, C, self.node_bounds()))

    def node_bounds(self) -> list[Bounds]:
        return [self.bounds[i] for i in range(len(self.net.nodes))]

    def bound_with_argmin(self, C: Tensor) -> tuple[Tensor, Tensor]:
        """Lower bounds (N, K) and, per row, the input corner minimising the linear bound (N, K, *in)."""
        if len(self.bounds) < len(self.net.nodes):
            self.compute_intermediate_bounds()
        A_in, const = self.backsubstitute(self.output, C)
        return const + concretize(A_in, self.lower, self.upper), argmin_on_box(A_in, self.lower, self.upper)


def bound_linear(net: Network, lower: Tensor, upper: Tensor, C: Tensor) -> Tensor:
    """DeepPoly lower bounds of ``C y`` for y = net(x), x in [lower, upper]: (N, K)."""
    return DeepPoly(net, lower, upper).bound(C)
