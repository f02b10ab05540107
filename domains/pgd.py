"""Projected gradient ascent over a box: the one PGD used by training and by the attacks.

Sign-gradient steps (L-inf geometry), random starts, a step size that decays
at fixed fractions of the run, and the best point per sample is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def pgd_maximize(loss_fn: Callable[[Tensor], Tensor], lower: Tensor, upper: Tensor, steps: int = 8,
                 step_size: float = 0.25, restarts: int = 1, x0: Tensor | None = None,
                 decay: tuple[tuple[float, float], ...] = ((0.5, 0.1), (0.75, 0.1)),
                 generator: torch.Generator | None = None,
                 stop: Callable[[Tensor], Tensor] | None = None,
                 init: Callable[[], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Maximise ``loss_fn`` (N, *s) -> (N,) over the box [lower, upper] (N, *s).

    step_size is relative to the box width (``step_size * (upper - lower)``);
    ``decay`` lists (fraction of steps, factor) milestones. The first restart
    starts at ``x0`` when given, the others at ``init()`` (N, *s) when given,
    else uniformly at random. ``stop(loss)``
    (N,) -> bool marks samples whose search can end (e.g. a counterexample was
    found); the run ends when all have stopped. Returns the best point (N, *s)
    and its loss (N,), computed without gradients on the caller's graph.
    """
    width = (upper - lower).detach()
    lower, upper = lower.detach(), upper.detach()
    best_x, best_loss = lower.clone(), torch.full(lower.shape[:1], -torch.inf, device=lower.device,
                                                  dtype=lower.dtype)
    per_sample = (-1,) + (1,) * (lower.dim() - 1)

    for restart in range(restarts):
        if restart == 0 and x0 is not None:
            x = x0.detach().clamp(lower, upper)
        elif init is not None:
            x = init().detach().clamp(lower, upper)
        else:
            x = lower + width * torch.rand(lower.shape, generator=generator, device=lower.device, dtype=lower.dtype)
        size = step_size
        for step in range(steps + 1):
            x.requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(x)
                total = loss.sum()
            # keep the best point per sample (torch.where: no masked copies, which cost as much on images)
            value = loss.detach()
            better = value > best_loss
            best_loss = torch.where(better, value, best_loss)
            best_x = torch.where(better.view(per_sample), x.detach(), best_x)
            if step == steps or (stop is not None and bool(stop(best_loss).all())):
                break  # before the backward pass: the last point's gradient would go unused
            grad, = torch.autograd.grad(total, x)
            size = step_size * _decay_factor(step + 1, steps, decay)
            x = torch.addcmul(x.detach(), width, grad.sign(), value=size).clamp_(lower, upper)
        if stop is not None and bool(stop(best_loss).all()):
            break
    return best_x, best_loss


def _decay_factor(step: int, steps: int, decay: tuple[tuple[float, float], ...]) -> float:
    factor = 1.0
    for fraction, f in decay:
        if step >= fraction * steps:
            factor *= f
    return factor
