"""Verification specifications: an input box and an output property.

The output property is stored in the form VNN-LIB uses for counterexamples:
a disjunction of clauses, each a conjunction of linear constraints
``C[j] . y <= d[j]`` over the network output ``y``. The property *holds*
(``certified``) iff no clause is satisfiable, i.e. for every clause some row
has a margin ``C[j] . y - d[j] > 0`` on the whole input region.

L-inf robustness of label ``t`` is the clause set ``{y_t - y_i <= 0 : i != t}``
with one row per clause, so "prove ``C y > d``" is the usual margin form.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor


class SpecError(ValueError):
    """A specification that cannot be built (bad epsilon, shapes, VNN-LIB...)."""


@dataclass
class OutputSpec:
    """Unsafe iff some clause k has ``C[j] y <= d[j]`` for all rows j of clause k.

    C: (m, n_out)  d: (m,)  clause: (m,) long, clause id of each row, 0..n_clauses-1
    """

    C: Tensor
    d: Tensor
    clause: Tensor

    @property
    def n_clauses(self) -> int:
        return int(self.clause.max().item()) + 1 if self.clause.numel() else 0

    def margins(self, y: Tensor) -> Tensor:
        """``C y - d`` for outputs y (..., n_out) -> (..., m)."""
        return y @ self.C.to(y).T - self.d.to(y)

    def clause_margin(self, row_value: Tensor) -> Tensor:
        """Per clause, the best (largest) row value: (..., m) -> (..., n_clauses).

        Applied to row *lower bounds* this is the provable margin of a clause
        (positive = clause unsatisfiable); applied to concrete margins it is
        positive iff the point violates the clause (is safe for it).
        """
        shape = row_value.shape[:-1] + (self.n_clauses,)
        out = torch.full(shape, -torch.inf, dtype=row_value.dtype, device=row_value.device)
        index = self.clause.to(row_value.device).expand_as(row_value)
        return out.scatter_reduce(-1, index, row_value, reduce="amax")

    def is_counterexample(self, y: Tensor) -> Tensor:
        """True where the output y (..., n_out) satisfies some clause (..., )."""
        return (self.clause_margin(self.margins(y)) <= 0).any(-1)

    def to(self, device=None, dtype=None) -> OutputSpec:
        return OutputSpec(self.C.to(device=device, dtype=dtype), self.d.to(device=device, dtype=dtype),
                          self.clause.to(device=device))


@dataclass
class Property:
    """One input box (per-sample shape) with the output property to prove over it."""

    lower: Tensor
    upper: Tensor
    output: OutputSpec

    def __post_init__(self):
        if self.lower.shape != self.upper.shape:
            raise SpecError(f"input bounds have different shapes {tuple(self.lower.shape)} "
                            f"and {tuple(self.upper.shape)}")
        if bool((self.lower > self.upper).any()):
            raise SpecError("empty input box: some lower bound exceeds its upper bound")


def robustness_spec(label: int, n_classes: int) -> OutputSpec:
    """Clauses ``y_label - y_i <= 0`` for every i != label (one row each)."""
    if not 0 <= label < n_classes:
        raise SpecError(f"label {label} out of range for a model with {n_classes} outputs")
    others = [i for i in range(n_classes) if i != label]
    C = torch.zeros(len(others), n_classes)
    C[:, label] = 1.0
    C[torch.arange(len(others)), others] = -1.0
    return OutputSpec(C, torch.zeros(len(others)), torch.arange(len(others)))


def linf_ball(x: Tensor, eps: float, clip_min: float = 0.0, clip_max: float = 1.0) -> tuple[Tensor, Tensor]:
    """The L-inf ball of radius eps around x, intersected with [clip_min, clip_max]."""
    return (x - eps).clamp(clip_min, clip_max), (x + eps).clamp(clip_min, clip_max)


def parse_eps(text: str, clip_min: float = 0.0, clip_max: float = 1.0) -> float:
    """Parse ``0.1``, ``2/255`` or ``1e-2``; reject negatives and eps beyond the input range."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise SpecError(f"invalid --eps {text!r}: expected a number such as 0.1 or 2/255") from None
    if not value == value or value in (float("inf"), float("-inf")):
        raise SpecError(f"invalid --eps {text!r}: must be finite")
    if value < 0:
        raise SpecError(f"invalid --eps {text!r}: must be non-negative")
    if value > clip_max - clip_min:
        raise SpecError(f"invalid --eps {text!r}: larger than the input range [{clip_min}, {clip_max}]")
    return value
