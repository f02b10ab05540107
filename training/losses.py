"""The certified (Box) cross-entropy loss of IBP and SABR.

For label t, the margin matrix C has rows e_t - e_i, so ``C y`` are the logit
differences y_t - y_i. Box gives lower bounds m_i of them over the input region
(C is folded into the last affine layers by ``domains.box.bound_linear``), and
the loss is the cross-entropy of the worst-case logits -m (with 0 for class t).
Since -m_i >= y_i - y_t at every point of the region, it upper-bounds the
cross-entropy of every point there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nncert.domains.box import Bounds, bound_linear
from nncert.domains.network import Network


def margin_matrix(y: Tensor, n_classes: int) -> Tensor:
    """C (N, K, K) with row i = e_y - e_i (the row of the true class is zero)."""
    onehot = F.one_hot(y, n_classes).float()
    return onehot[:, None, :] - torch.eye(n_classes, device=y.device)[None]


def margin_lower_bounds(net: Network, lower: Tensor, upper: Tensor, y: Tensor,
                        bounds: list[Bounds] | None = None) -> Tensor:
    """Box lower bounds of y_t - y_i over [lower, upper] (N, C, H, W): (N, K), zero at i = t."""
    C = margin_matrix(y, net.output_shape[0]).to(lower.dtype)
    return bound_linear(net, lower, upper, C, bounds)


def box_cross_entropy(margins: Tensor, y: Tensor) -> Tensor:
    """Mean CE of the worst-case logits -margins (N, K)."""
    return F.cross_entropy(-margins, y)
