"""The one rule by which a floating-point bound decides anything.

A lower bound ``b`` of a quantity compared with a threshold ``t`` (a row of a
property, a neuron's bound against 0, ``lo`` against ``hi`` of a region)
proves ``b > t`` only if both are finite and the gap clears the rounding of
the numbers compared:

    b - t > SLACK * eps(dtype) * (|b| + |t|)

Rounding inside the computation of ``b`` is not covered here: float32
verdicts are re-checked in float64, or computed in float64 (verifier.registry).
NaN and +-inf prove nothing: a search keeps them open.
"""

from __future__ import annotations

import torch
from torch import Tensor

# a difference of two rounded numbers is off by a few eps of their magnitude; 16 leaves room for the last
# operations that produced them (the sum of a bound's final terms)
SLACK = 16.0


def margins(lower: Tensor, threshold: Tensor | float) -> Tensor:
    """``lower - threshold`` less the rounding tolerance (broadcast shape): > 0 only where proven.

    NaN or infinite operands give -inf (open), whatever the other operand.
    """
    threshold = torch.as_tensor(threshold, dtype=lower.dtype, device=lower.device)
    gap = lower - threshold
    gap = gap - SLACK * torch.finfo(lower.dtype).eps * (lower.abs() + threshold.abs())
    finite = torch.isfinite(lower) & torch.isfinite(threshold)
    return torch.where(finite, gap, torch.full_like(gap, -torch.inf))


def proved(margin: Tensor) -> Tensor:
    """Where a margin of :func:`margins` (or a max / min of them) proves its clause or bound (bool)."""
    return torch.isfinite(margin) & (margin > 0)


def empty(lo: Tensor, hi: Tensor) -> Tensor:
    """Where the bounds ``lo > hi`` prove a region empty, not only by rounding (bool, same shape)."""
    return proved(margins(lo, hi))


def empty_margin(like: Tensor) -> Tensor:
    """The margin of a region proven empty (same shape as ``like``): the largest finite value, proving all."""
    return torch.full_like(like, torch.finfo(like.dtype).max)


def all_proved(verdicts: list[bool], expected: int) -> bool:
    """True iff there is one verdict for each of the ``expected`` items (at least one) and all are True."""
    if len(verdicts) != expected:
        raise ValueError(f"{len(verdicts)} verdicts for {expected} items")
    return expected > 0 and all(verdicts)
