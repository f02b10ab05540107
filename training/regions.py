"""Input regions: the epsilon ball and SABR's small adversarial box inside it.

SABR (Mueller et al., ICLR 2023) propagates, instead of the whole L-inf ball
B(x, eps), a box of radius tau = lambda * eps around a point that PGD found to
have high loss. The centre is projected so the small box stays inside the ball
intersected with the valid input range; lambda = 1 gives back the whole ball (IBP).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nncert.training.adversarial import attack, cross_entropy_objective

VALID_RANGE = (0.0, 1.0)


def linf_box(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """B(x, eps) clipped to the valid range: (lower, upper), each (N, C, H, W)."""
    low, high = VALID_RANGE
    return (x - eps).clamp(min=low), (x + eps).clamp(max=high)


def small_box(centre: Tensor, x: Tensor, eps: float, tau: float) -> tuple[Tensor, Tensor]:
    """The box of radius tau around ``centre`` moved inside B(x, eps) and the valid range.

    The centre is projected onto [lower + tau, upper - tau] of the clipped ball;
    where the clipped ball is narrower than 2 tau the box is the clipped ball there.
    """
    lower, upper = linf_box(x, eps)
    centre = torch.minimum(torch.maximum(centre, lower + tau), upper - tau)
    return torch.maximum(centre - tau, lower), torch.minimum(centre + tau, upper)


def sabr_region(model: nn.Module, x: Tensor, y: Tensor, eps: float, lam: float,
                steps: int) -> tuple[Tensor, Tensor]:
    """SABR's propagation region: a PGD point of B(x, eps) (CE loss, model in eval mode), boxed by tau = lam eps."""
    if lam >= 1.0:
        return linf_box(x, eps)
    centre = attack(model, x, y, *linf_box(x, eps), steps, cross_entropy_objective)
    return small_box(centre, x, eps, lam * eps)
