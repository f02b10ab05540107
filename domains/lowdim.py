"""DeepPoly bounds of a batch of input boxes of few dimensions (input-splitting branch-and-bound).

Two things make DeepPoly cheaper when the input has only n dimensions (ACAS Xu: 5)
and the batch holds thousands of sub-boxes:

- forward linear bounds first: every node's bounds are ``mid(t) -+ rad(t)``,
  two linear functions of the normalised input ``t in [-1, 1]^n`` (``x =
  centre + radius * t``) stored as coefficients (N, n + 1, *shape), the last
  row the constant. An affine op maps ``mid`` by its linear part (its bias on
  the constant) and ``rad`` by ``|W|`` (``W z >= W mid - |W| rad`` whenever
  ``mid - rad <= z <= mid + rad``: Box's centre/radius rule on functions); a
  ReLU applies DeepPoly's lines to both. One pass costs O(N n w^2) per layer
  of width w; the extremes of these functions, intersected with the interval
  bounds and any known (parent) bounds, leave fewer neurons unstable;
- back-substitution of only those unstable neurons, the rows of all boxes
  stacked (R rows in all) instead of padded to the largest count of any box,
  each row meeting its own box's ReLU lines.

The final rows are back-substituted the same way. The bounds are DeepPoly's
where the forward functions do not help and usually tighter (not everywhere:
a tighter bound before a ReLU can flip its lower slope to one that is worse
for some later neuron).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nncert.domains.backsub import backsubstitute, concretize
from nncert.domains.box import Bounds, affine_bounds
from nncert.domains.deeppoly import exact_by_intervals, min_area_lower_slope, triangle_upper
from nncert.domains.network import Activation, Monotone, Network, ReLU


def supports(net: Network) -> bool:
    """Whether every op has a forward linear image here (affine ops and ReLU; not the other activations or the
    monotone ops)."""
    return not any(isinstance(node.op, Monotone | Activation) for node in net.nodes)


def input_sensitivity(net: Network) -> Tensor:
    """How far each input dimension moves the first nonlinear op's input: the column sums of |W|, W the (affine)
    map from the input to that node, (n_in,); all ones without a nonlinear op."""
    nonlinear = [node for node in net.nodes[1:] if isinstance(node.op, ReLU | Activation | Monotone)]
    if not nonlinear:
        return torch.ones(math.prod(net.input_shape), dtype=net.dtype, device=net.device)
    first = nonlinear[0].inputs[0]
    size = math.prod(net.shapes[first])
    eye = torch.eye(size, dtype=net.dtype, device=net.device).view(1, size, *net.shapes[first])
    A_in, _ = backsubstitute(net, first, eye, {})
    return A_in[0].flatten(1).abs().sum(0)


@dataclass
class ReluLines:
    """DeepPoly's lines of one ReLU per box, (N, *s) each: ``slope_low x <= y <= slope_up x + intercept``."""

    slope_low: Tensor
    slope_up: Tensor
    intercept: Tensor

    @staticmethod
    def of(lo: Tensor, hi: Tensor) -> ReluLines:
        return ReluLines(min_area_lower_slope(lo, hi), *triangle_upper(lo, hi))

    def rows(self, owner: Tensor) -> ReluLines:
        """The lines of box ``owner[r]`` for each row r: (R, *s) each."""
        return ReluLines(self.slope_low[owner], self.slope_up[owner], self.intercept[owner])


def _extremes(mid: Tensor, rad: Tensor) -> Bounds:
    """Min of ``mid - rad`` and max of ``mid + rad`` over t in [-1, 1]^n: (N, n + 1, *s) -> (N, *s) each."""
    low, up = mid - rad, mid + rad
    return low[:, -1] - low[:, :-1].abs().sum(1), up[:, -1] + up[:, :-1].abs().sum(1)


def _affine(op, mids: list[Tensor], rads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """An affine op on linear functions (N, n + 1, *in) -> (N, n + 1, *out); its bias goes to the constant row."""
    n, k = mids[0].shape[:2]
    mid = op.forward(*(m.flatten(0, 1) for m in mids))
    bias = op.forward(*(m.new_zeros(1, *m.shape[2:]) for m in mids))  # (1, *out)
    mid = (mid - bias).view(n, k, *mid.shape[1:])
    mid[:, -1] += bias[0]
    rad = op.forward_abs(*(r.flatten(0, 1) for r in rads))
    return mid, rad.view(n, k, *rad.shape[1:])


def _relu(mid: Tensor, rad: Tensor, lines: ReluLines) -> tuple[Tensor, Tensor]:
    """ReLU's lines applied to linear functions ``mid -+ rad`` (N, n + 1, *s); slopes are >= 0."""
    low = lines.slope_low.unsqueeze(1) * (mid - rad)
    up = lines.slope_up.unsqueeze(1) * (mid + rad)
    up[:, -1] += lines.intercept
    return (up + low) / 2, (up - low) / 2


def backsubstitute_rows(net: Network, start: int, A: Tensor, owner: Tensor, lines: dict[int, ReluLines]
                        ) -> tuple[Tensor, Tensor]:
    """DeepPoly's lower bound of rows ``A . x_start`` (R, *shape[start]), row r on box ``owner[r]``, in terms of
    the input: ``(A_in (R, *input_shape), const (R,))``.

    Rows of different boxes are stacked rather than padded to a common count per box: each row meets its
    own box's ReLU lines, gathered by ``owner`` (R,).
    """
    pending = {start: A.unsqueeze(0)}
    const = A.new_zeros(1, A.shape[0])
    for i in range(start, 0, -1):
        if i not in pending:
            continue
        A_i = pending.pop(i)
        node = net.nodes[i]
        if isinstance(node.op, ReLU):
            line = lines[i].rows(owner)
            neg = A_i.clamp(max=0)
            coefficients = [A_i * line.slope_low + neg * (line.slope_up - line.slope_low)]
            c = (neg * line.intercept).flatten(2).sum(-1)
        else:
            coefficients, c = node.op.backward(A_i)
        const = const + c
        for j, A_j in zip(node.inputs, coefficients):
            pending[j] = pending[j] + A_j if j in pending else A_j
    A_in = pending.pop(0, None)
    if A_in is None:
        A_in = A.new_zeros(1, *A.shape[:1], *net.input_shape)
    return A_in[0], const[0]


def row_lower(A_in: Tensor, const: Tensor, lower: Tensor, upper: Tensor, owner: Tensor) -> Tensor:
    """min over box ``owner[r]`` of ``A_in[r] . x + const[r]``: (R, *in), (R,) -> (R,)."""
    return const + concretize(A_in.unsqueeze(1), lower[owner], upper[owner]).squeeze(1)


@dataclass
class LowDimBounds:
    """Every node's interval bounds (N, *shape[i]) and every ReLU's lines, for a batch of boxes."""

    bounds: dict[int, Bounds]
    lines: dict[int, ReluLines]

    def node_bounds(self) -> list[Bounds]:
        return [self.bounds[i] for i in range(len(self.bounds))]


def _refine(net: Network, node: int, lo: Tensor, hi: Tensor, lower: Tensor, upper: Tensor,
            lines: dict[int, ReluLines], chunk_elements: int) -> Bounds:
    """Bounds of ``node``'s unstable neurons (N, *s) tightened by back-substitution, all boxes' rows stacked."""
    flat_lo, flat_hi = lo.flatten(1).clone(), hi.flatten(1).clone()
    box, neuron = torch.nonzero((flat_lo < 0) & (flat_hi > 0), as_tuple=True)
    width = max(math.prod(shape) for shape in net.shapes[:node + 1])
    step = max(1, chunk_elements // (2 * width))
    for b, f in zip(box.split(step), neuron.split(step)):
        rows = torch.zeros(2 * len(b), flat_lo.shape[1], dtype=lo.dtype, device=lo.device)
        sign = torch.cat([torch.ones_like(f, dtype=lo.dtype), -torch.ones_like(f, dtype=lo.dtype)])
        rows[torch.arange(2 * len(b), device=lo.device), torch.cat([f, f])] = sign
        owner = torch.cat([b, b])
        bound = row_lower(*backsubstitute_rows(net, node, rows.view(-1, *lo.shape[1:]), owner, lines),
                          lower, upper, owner)
        flat_lo[b, f] = torch.maximum(flat_lo[b, f], bound[:len(b)])
        flat_hi[b, f] = torch.minimum(flat_hi[b, f], -bound[len(b):])
    return flat_lo.view_as(lo), flat_hi.view_as(hi)


def lowdim_bounds(net: Network, lower: Tensor, upper: Tensor, known: dict[int, Bounds] | None = None,
                  chunk_elements: int = 1 << 16) -> LowDimBounds:
    """Bounds of every node for inputs in [lower, upper] (N, *input_shape), by forward linear functions.

    ``known`` holds valid bounds of some nodes (e.g. a parent box's), intersected in. The neurons of a
    ReLU's input that these leave unstable are back-substituted (as DeepPoly does, each row with its own
    box's lines) before the ReLU's lines are chosen; ``chunk_elements`` bounds the coefficients of one
    back-substitution.
    """
    known = known or {}
    n = lower[0].numel()
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    mid = torch.cat([torch.diag_embed(radius.flatten(1)), centre.flatten(1).unsqueeze(1)], 1)
    mids = {0: mid.view(-1, n + 1, *net.input_shape)}
    rads = {0: torch.zeros_like(mids[0])}
    out = LowDimBounds({0: (lower, upper)}, {})
    bounds, lines = out.bounds, out.lines
    pre_activations = {net.nodes[r].inputs[0] for r in net.relu_nodes} - exact_by_intervals(net)
    for i, node in enumerate(net.nodes[1:], start=1):
        if isinstance(node.op, ReLU):
            j = node.inputs[0]
            lines[i] = ReluLines.of(*bounds[j])
            mids[i], rads[i] = _relu(mids[j], rads[j], lines[i])
            bounds[i] = (torch.relu(bounds[j][0]), torch.relu(bounds[j][1]))
            continue
        mids[i], rads[i] = _affine(node.op, [mids[j] for j in node.inputs], [rads[j] for j in node.inputs])
        lo, hi = _extremes(mids[i], rads[i])
        box_lo, box_hi = affine_bounds(node.op, *(bounds[j] for j in node.inputs))
        lo, hi = torch.maximum(lo, box_lo), torch.minimum(hi, box_hi)
        if i in known:
            lo, hi = torch.maximum(lo, known[i][0]), torch.minimum(hi, known[i][1])
        if i in pre_activations:
            lo, hi = _refine(net, i, lo, hi, lower, upper, lines, chunk_elements)
        bounds[i] = (lo, hi)
    return out
