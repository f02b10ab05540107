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

from nncert.domains import decide


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

    def is_counterexample(self, y: Tensor) -> Tensor:
        """True where the output y (N, n_out) satisfies every row of some clause: (N,)."""
        batch = PropertyBatch(y.new_zeros(len(y), 1), y.new_zeros(len(y), 1), self.C.expand(len(y), -1, -1),
                              self.d.expand(len(y), -1), self.clause)
        return batch.property_margin(y) <= 0

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
    """The L-inf ball of radius eps around x, intersected with [clip_min, clip_max], in float64 and widened by
    the float64 rounding of eps and of the sum, so that it contains the exact ball (as a float32 copy does:
    :meth:`PropertyBatch.to` rounds outward)."""
    x = x.double()
    slack = 2 * torch.finfo(torch.float64).eps * (x.abs() + eps)
    return (x - eps - slack).clamp(clip_min, clip_max), (x + eps + slack).clamp(clip_min, clip_max)


def round_outward(t: Tensor, dtype: torch.dtype, direction: float) -> Tensor:
    """``t`` in ``dtype``, rounded towards ``direction`` (-inf: never above t, +inf: never below) when
    ``dtype`` cannot hold it exactly."""
    out = t.to(dtype)
    if not (t.is_floating_point() and dtype.is_floating_point) or torch.finfo(dtype).bits >= torch.finfo(t.dtype).bits:
        return out
    wrong = out.to(t.dtype) > t if direction < 0 else out.to(t.dtype) < t
    return torch.where(wrong, torch.nextafter(out, torch.full_like(out, direction)), out)


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


@dataclass
class PropertyBatch:
    """N properties with the same clause structure, verified together.

    lower, upper: (N, *input_shape)   C: (N, m, n_out)   d: (N, m)   clause: (m,)
    Row j of property n is ``C[n, j] . y <= d[n, j]``; clauses as in :class:`OutputSpec`.
    """

    lower: Tensor
    upper: Tensor
    C: Tensor
    d: Tensor
    clause: Tensor

    def __len__(self) -> int:
        return self.lower.shape[0]

    @classmethod
    def stack(cls, props: list[Property]) -> PropertyBatch:
        """Stack properties; differing clause structures are padded to a common one.

        Padding never changes a property: a padded row ``0 . y <= 1`` is always
        true (a conjunction keeps its meaning) and a padded clause made of rows
        ``0 . y <= -1`` is never satisfied (a disjunction keeps its meaning).
        """
        clause = props[0].output.clause
        outputs = [p.output for p in props]
        if any(not torch.equal(o.clause, clause) for o in outputs):
            outputs, clause = _common_structure(outputs)
        return cls(torch.stack([p.lower for p in props]), torch.stack([p.upper for p in props]),
                   torch.stack([o.C for o in outputs]), torch.stack([o.d for o in outputs]), clause)

    def __getitem__(self, index) -> PropertyBatch:
        index = [index] if isinstance(index, int) else index
        return PropertyBatch(self.lower[index], self.upper[index], self.C[index], self.d[index], self.clause)

    def to(self, device=None, dtype=None) -> PropertyBatch:
        """On ``device`` in ``dtype``; to a lower precision, rounded so that proving gets harder: the box
        outward, the thresholds d up, and a row whose coefficients C ``dtype`` cannot hold exactly gets d = +inf
        (a row nothing proves: the float64 guard decides it on the row as given). The VNN-LIB parser scales such
        rows to small integer coefficients, which float32 holds."""
        dtype = dtype or self.lower.dtype
        lower, upper, d = (round_outward(t, dtype, s).to(device) for t, s in
                           ((self.lower, -torch.inf), (self.upper, torch.inf), (self.d, torch.inf)))
        C = self.C.to(device, dtype)
        inexact = (C.to(self.C.dtype) != self.C.to(C.device)).any(-1)
        return PropertyBatch(lower, upper, C, d.masked_fill(inexact, torch.inf), self.clause.to(device))

    @property
    def n_clauses(self) -> int:
        return int(self.clause.max().item()) + 1

    def row_margins(self, y: Tensor) -> Tensor:
        """``C y - d`` for outputs y (N, n_out) -> (N, m); a batch of one property applies to every y."""
        C, d = self.C.to(y), self.d.to(y)
        if C.shape[0] == 1:
            C, d = C.expand(len(y), -1, -1), d.expand(len(y), -1)
        return torch.einsum("nmo,no->nm", C, y) - d

    def clause_margins(self, rows: Tensor) -> Tensor:
        """Best row per clause: (N, m) -> (N, n_clauses). Positive = clause excluded."""
        out = rows.new_full((rows.shape[0], self.n_clauses), -torch.inf)
        return out.scatter_reduce(1, self.clause.to(rows.device).expand_as(rows), rows, reduce="amax")

    def property_margin(self, y: Tensor) -> Tensor:
        """min over clauses of the clause margin at outputs y (N, n_out) -> (N,); <= 0 is a counterexample."""
        return self.clause_margins(self.row_margins(y)).min(1).values

    def certified(self, row_lower: Tensor) -> Tensor:
        """Given lower bounds of ``C y`` (N, m): True where every clause has a row provably > d
        (:mod:`domains.decide`: never by NaN, inf or rounding alone)."""
        return decide.proved(self.clause_margins(decide.margins(row_lower, self.d.to(row_lower)))).all(1)


def _common_structure(outputs: list[OutputSpec]) -> tuple[list[OutputSpec], Tensor]:
    """Pad every spec to the same number of clauses with the same number of rows each."""
    n_clauses = max(o.n_clauses for o in outputs)
    n_rows = max(int(torch.bincount(o.clause).max()) for o in outputs)
    clause = torch.arange(n_clauses).repeat_interleave(n_rows)
    padded = []
    for o in outputs:
        C = o.C.new_zeros(n_clauses * n_rows, o.C.shape[1])
        d = o.d.new_full((n_clauses * n_rows,), -1.0)  # rows of missing clauses: never satisfied
        for k in range(n_clauses):
            rows = torch.nonzero(o.clause == k).flatten()
            slots = slice(k * n_rows, (k + 1) * n_rows)
            if len(rows):
                d[slots] = 1.0  # rows missing from an existing clause: always satisfied
                C[k * n_rows:k * n_rows + len(rows)] = o.C[rows]
                d[k * n_rows:k * n_rows + len(rows)] = o.d[rows]
        padded.append(OutputSpec(C, d, clause))
    return padded, clause
