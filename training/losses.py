"""The certified (Box) cross-entropy loss of IBP and SABR.

For label t, the margin matrix C has rows e_t - e_i, so ``C y`` are the logit
differences y_t - y_i. Box gives lower bounds m_i of them over the input region
(C is folded into the affine layers after the last ReLUs, as ``domains.box.bound_linear``
does), and the loss is the cross-entropy of the worst-case logits -m (with 0 for class t).
Since -m_i >= y_i - y_t at every point of the region, it upper-bounds the
cross-entropy of every point there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nncert.domains.backsub import backsubstitute
from nncert.domains.box import Bounds, propagate, reaches_input
from nncert.domains.network import Network


def margin_matrix(y: Tensor, n_classes: int) -> Tensor:
    """C (N, K, K) with row i = e_y - e_i (the row of the true class is zero)."""
    onehot = F.one_hot(y, n_classes).float()
    return onehot[:, None, :] - torch.eye(n_classes, device=y.device)[None]


def margin_lower_bounds(net: Network, lower: Tensor, upper: Tensor, y: Tensor,
                        bounds: list[Bounds] | None = None) -> Tensor:
    """Box lower bounds of y_t - y_i over [lower, upper] (N, C, H, W): (N, K), zero at i = t.

    The folded coefficients depend on the label only, so C is folded once per class rather than once per
    sample, and the nodes where the back-substitution stops are concretised for every class at once by a
    matrix product, each sample keeping its label's row (the same bounds as ``domains.box.bound_linear``
    with one C per sample, up to float rounding; much cheaper than its batch of matrix-vector products).
    """
    bounds = propagate(net, lower, upper) if bounds is None else bounds
    n_classes = net.output_shape[0]
    stopped = []  # (bounds of the node, coefficients of every class (K, K, *node shape))

    def defer(i: int, A_i: Tensor) -> Tensor:
        stopped.append((bounds[i], A_i))
        return A_i.new_zeros(A_i.shape[:2])

    C = margin_matrix(torch.arange(n_classes, device=y.device), n_classes).to(lower.dtype)
    A_in, const = backsubstitute(net, len(net.nodes) - 1, C, {}, stop=defer)
    if reaches_input(net):
        stopped.append(((lower, upper), A_in))
    return const[y] + sum(concretize_by_label(A, lo, hi, y) for (lo, hi), A in stopped)


def concretize_by_label(A: Tensor, lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
    """min of A[y_n] . x over [lower_n, upper_n]: A (K, K, *s) per class, bounds (N, *s), y (N,) -> (N, K)."""
    centre, radius = ((upper + lower) / 2).flatten(1), ((upper - lower) / 2).flatten(1)
    rows = A.flatten(2).flatten(0, 1)  # (K * K, D)
    every_class = centre @ rows.T - radius @ rows.abs().T  # (N, K * K)
    return every_class.view(len(y), *A.shape[:2])[torch.arange(len(y), device=y.device), y]


def box_cross_entropy(margins: Tensor, y: Tensor) -> Tensor:
    """Mean CE of the worst-case logits -margins (N, K)."""
    return F.cross_entropy(-margins, y)
