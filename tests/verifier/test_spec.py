"""Specifications: robustness clauses, eps parsing, batching with differing clause structures."""

from fractions import Fraction

import pytest
import torch

from nncert.verifier.spec import OutputSpec, Property, PropertyBatch, SpecError, linf_ball, parse_eps, robustness_spec
from nncert.verifier.vnnlib import parse_vnnlib

INF = float("inf")


def test_robustness_spec_rows():
    spec = robustness_spec(1, 3)
    assert spec.C.tolist() == [[-1.0, 1.0, 0.0], [0.0, 1.0, -1.0]]
    y = torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 2.0]])
    assert spec.is_counterexample(y).tolist() == [False, True]


@pytest.mark.parametrize("text,value", [("0.1", 0.1), ("2/255", 2 / 255), ("1e-2", 0.01), (" 0 ", 0.0)])
def test_parse_eps_accepts(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["2/0", "-1", "abc", "nan", "inf", "1.5", ""])
def test_parse_eps_rejects(text):
    with pytest.raises(SpecError):
        parse_eps(text)


def test_linf_ball_is_clipped():
    lo, hi = linf_ball(torch.tensor([0.05, 0.5, 0.97]), 0.1)
    assert lo.dtype == hi.dtype == torch.float64
    assert torch.allclose(lo.float(), torch.tensor([0.0, 0.4, 0.87]))
    assert torch.allclose(hi.float(), torch.tensor([0.15, 0.6, 1.0]))


def test_empty_box_rejected():
    with pytest.raises(SpecError, match="empty"):
        Property(torch.ones(2), torch.zeros(2), robustness_spec(0, 2))


def test_stacking_different_structures_keeps_every_property():
    a = OutputSpec(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 0.0]), torch.tensor([0, 0]))
    b = OutputSpec(torch.tensor([[1.0, -1.0], [-1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 0.5, 2.0]),
                   torch.tensor([0, 1, 2]))
    box = (torch.zeros(2), torch.ones(2))
    batch = PropertyBatch.stack([Property(*box, a), Property(*box, b)])
    y = torch.randn(500, 2) * 2
    for n, spec in enumerate([a, b]):
        stacked = batch[[n]].property_margin(y) <= 0
        assert torch.equal(stacked, spec.is_counterexample(y))


def test_float32_copies_of_linf_balls_contain_the_exact_ball():
    """Rounded to float32, the ball around float32 images at eps = 2/255 keeps every point of the exact ball
    (rounding to nearest loses points of about half of the faces)."""
    x = torch.rand(2000, generator=torch.Generator().manual_seed(0))
    eps = Fraction(2, 255)
    lo, hi = linf_ball(x, float(eps))
    n = len(x)
    box = PropertyBatch(lo.view(1, n), hi.view(1, n), torch.zeros(1, 1, 1), torch.zeros(1, 1),
                        torch.zeros(1, dtype=torch.long))
    small = box.to(dtype=torch.float32)
    for xi, l32, h32 in zip(x.tolist(), small.lower[0].tolist(), small.upper[0].tolist(), strict=True):
        assert Fraction(l32) <= max(Fraction(xi) - eps, Fraction(0))
        assert Fraction(h32) >= min(Fraction(xi) + eps, Fraction(1))


def test_vnnlib_boxes_and_constants_round_outward():
    """Decimal bounds not representable in float64 or float32 and output constants not representable in float32:
    the box grows, the thresholds d rise (y > d gets harder to prove); representable values stay."""
    text = """(declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
              (assert (>= X_0 0.1)) (assert (<= X_0 0.7)) (assert (>= X_1 -0.5)) (assert (<= X_1 0.25))
              (assert (or (and (<= Y_0 0.3)) (and (>= Y_1 0.6))))"""
    (prop,) = parse_vnnlib(text, n_inputs=2, n_outputs=2)
    exact = {"lo": [Fraction("0.1"), Fraction("-0.5")], "hi": [Fraction("0.7"), Fraction("0.25")],
             "d": [Fraction("0.3"), Fraction("-0.6")]}
    batch = PropertyBatch.stack([prop])
    for dtype in (torch.float64, torch.float32):
        rounded = batch.to(dtype=dtype)
        got = {"lo": rounded.lower[0].tolist(), "hi": rounded.upper[0].tolist(), "d": rounded.d[0].tolist()}
        assert all(Fraction(v) <= e for v, e in zip(got["lo"], exact["lo"], strict=True))
        assert all(Fraction(v) >= e for v, e in zip(got["hi"], exact["hi"], strict=True))
        assert all(Fraction(v) >= e for v, e in zip(got["d"], exact["d"], strict=True))
        assert got["lo"][1] == -0.5 and got["hi"][1] == 0.25  # exact in binary: unchanged


def _dtype_steps(value: float, dtype: torch.dtype, direction: float) -> float:
    """The next value of ``dtype`` after ``value`` towards ``direction``."""
    t = torch.tensor([value], dtype=dtype)
    return float(torch.nextafter(t, torch.full_like(t, direction)))


def test_vnnlib_expressions_are_evaluated_exactly_and_rounded_outward_once():
    """Bounds and constants given by expressions that float64 arithmetic rounds inward (0.3 - 0.2 is below 0.1
    in float64, 2 * 0.15 below 0.3), and a row with coefficients float32 cannot hold: the box, every threshold
    and every row contain the exact ones, and by no more than one step of the precision."""
    text = """(declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
              (assert (<= X_0 (- 0.3 0.2))) (assert (>= X_0 -1)) (assert (>= (* 0.5 X_1) (- 0.15 0.3)))
              (assert (<= X_1 (* 2 0.15)))
              (assert (or (and (<= Y_0 (- 0.3 0.2))) (and (<= (+ (* 0.3 Y_0) (* -0.7 Y_1)) 0.1))))"""
    (prop,) = parse_vnnlib(text, n_inputs=2, n_outputs=2)
    exact_hi, exact_lo = [Fraction("0.1"), Fraction("0.3")], [Fraction(-1), Fraction("-0.3")]
    exact_rows = [([Fraction(1), Fraction(0)], Fraction("0.1")), ([Fraction("0.3"), Fraction("-0.7")], Fraction("0.1"))]
    for dtype in (torch.float64, torch.float32):
        batch = PropertyBatch.stack([prop]).to(dtype=dtype)
        for v, e in zip(batch.upper[0].tolist(), exact_hi, strict=True):
            assert Fraction(v) >= e and Fraction(_dtype_steps(v, dtype, -INF)) < e
        for v, e in zip(batch.lower[0].tolist(), exact_lo, strict=True):
            assert Fraction(v) <= e and (Fraction(v) == e or Fraction(_dtype_steps(v, dtype, INF)) > e)
        for (c, d), (row, threshold) in zip(exact_rows, zip(batch.C[0].tolist(), batch.d[0].tolist()), strict=True):
            scale = Fraction(row[0]) / c[0]  # the row may be scaled by a positive factor: the same half-space
            assert scale > 0 and [Fraction(r) for r in row] == [scale * ci for ci in c]
            assert Fraction(threshold) >= scale * d and Fraction(_dtype_steps(threshold, dtype, -INF)) < scale * d
    assert PropertyBatch.stack([prop]).C[0].tolist() == [[1.0, 0.0], [3.0, -7.0]]


def test_a_row_float32_cannot_hold_is_never_proved_in_float32():
    """2^24 + 1 has no float32: rounded to nearest, the row would be another half-space; its float32 copy
    gets d = +inf, which no bound proves, while the float64 copy keeps the row."""
    text = """(declare-const X_0 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
              (assert (>= X_0 0)) (assert (<= X_0 1)) (assert (<= (- (* 16777217 Y_0) Y_1) 0))"""
    batch = PropertyBatch.stack(parse_vnnlib(text, n_inputs=1, n_outputs=2))
    assert batch.C[0].tolist() == [[16777217.0, -1.0]] and batch.d[0].tolist() == [0.0]
    assert torch.isinf(batch.to(dtype=torch.float32).d).all()
    huge = torch.tensor([[1e30]])
    assert batch.to(dtype=torch.float64).certified(huge.double()).all()
    assert not batch.to(dtype=torch.float32).certified(huge).any()
