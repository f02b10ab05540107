"""The Box (interval) domain: batched, differentiable interval propagation.

Affine ops propagate centre and radius, ``W c + b`` and ``|W| r``, which is exact
for a single affine op; ReLU and the other monotone ops are applied to both
ends; the other activations (:class:`~domains.network.Activation`) bring
their own interval image. This is also the domain used by certified training (IBP / SABR), so
everything stays differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nncert.domains.backsub import backsubstitute, concretize
from nncert.domains.network import Activation, Monotone, Network, ReLU

Bounds = tuple[Tensor, Tensor]


def affine_bounds(op, *bounds: Bounds) -> Bounds:
    """Interval image of an affine op given interval inputs (N, *in) -> (N, *out)."""
    centers = [(lo + hi) / 2 for lo, hi in bounds]
    radii = [(hi - lo) / 2 for lo, hi in bounds]
    center, radius = op.forward(*centers), op.forward_abs(*radii)
    return center - radius, center + radius


def op_bounds(op, *bounds: Bounds) -> Bounds:
    """Interval image of any op of the IR given interval inputs (N, *in) -> (N, *out)."""
    if isinstance(op, ReLU):
        lo, hi = bounds[0]
        return torch.relu(lo), torch.relu(hi)
    if isinstance(op, Monotone | Activation):
        return op.bounds(*bounds[0])
    return affine_bounds(op, *bounds)


def propagate(net: Network, lower: Tensor, upper: Tensor) -> list[Bounds]:
    """Interval bounds of every node for inputs in [lower, upper] (N, *input_shape)."""
    bounds = [(lower, upper)]
    for node in net.nodes[1:]:
        bounds.append(op_bounds(node.op, *(bounds[j] for j in node.inputs)))
    return bounds


def bound_linear(net: Network, lower: Tensor, upper: Tensor, C: Tensor,
                 bounds: list[Bounds] | None = None) -> Tensor:
    """Lower bounds of ``C y`` for y = net(x), x in [lower, upper].

    C: (N, K, *output_shape) -> (N, K). C is folded into the affine layers after
    the last ReLU (back-substitution that stops at ReLUs), which is tighter than
    applying |C| to the output interval.
    """
    bounds = propagate(net, lower, upper) if bounds is None else bounds
    A_in, const = backsubstitute(net, len(net.nodes) - 1, C, dict(enumerate(bounds)))
    return const + concretize(A_in, lower, upper) if reaches_input(net) else const


def reaches_input(net: Network) -> bool:
    """Whether some path from the output to the input has no ReLU or monotone op, where back-substitution stops
    (otherwise its coefficients on the input are zero and their concretisation, costly on images, adds 0)."""
    reached = {len(net.nodes) - 1}
    for i in range(len(net.nodes) - 1, 0, -1):
        if i in reached and not isinstance(net.nodes[i].op, ReLU | Monotone):
            reached.update(net.nodes[i].inputs)
    return 0 in reached
