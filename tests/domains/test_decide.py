"""The decision rule: NaN, inf and rounding-sized gaps never prove anything."""

from __future__ import annotations

import pytest
import torch

from nncert.domains import decide

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_and_inf_prove_nothing(dtype):
    lower = torch.tensor([NAN, INF, 1.0, 1.0, -INF], dtype=dtype)
    threshold = torch.tensor([0.0, 0.0, NAN, -INF, 0.0], dtype=dtype)
    margins = decide.margins(lower, threshold)
    assert (margins == -INF).all()  # searches order them with the hardest subproblems
    assert not decide.proved(margins).any()
    assert not decide.empty(lower, threshold).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_margin_that_overflows_proves_nothing(dtype):
    big = torch.tensor([torch.finfo(dtype).max], dtype=dtype)
    assert not decide.proved(decide.margins(big, -big / 2)).any()
    assert not decide.proved(torch.tensor([INF, NAN], dtype=dtype)).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_gap_of_rounding_size_proves_nothing_a_clear_one_does(dtype):
    d = torch.tensor([1e4, -3.0, 0.0], dtype=dtype)
    ulp_above = torch.nextafter(d, torch.full_like(d, INF))
    assert not decide.proved(decide.margins(ulp_above[:2], d[:2])).any()
    assert not decide.proved(decide.margins(d, d)).any()  # an exact minimum of 0 is not > 0
    clear = d + torch.tensor([1.0, 1e-4, 1e-30], dtype=dtype)
    assert decide.proved(decide.margins(clear, d)).all()


def test_bounds_crossing_by_rounding_are_not_an_empty_region():
    hi = torch.tensor([0.3, -2.0, 5.0])
    lo = torch.nextafter(hi, torch.full_like(hi, INF))
    assert not decide.empty(lo, hi).any()
    assert decide.empty(hi + 1e-3, hi).all()


def test_the_empty_margin_proves_every_clause():
    assert decide.proved(decide.empty_margin(torch.zeros(3))).all()


def test_all_proved_needs_one_verdict_per_item():
    assert not decide.all_proved([], 0)
    assert decide.all_proved([True, True], 2)
    assert not decide.all_proved([True, False], 2)
    with pytest.raises(ValueError, match="verdicts"):
        decide.all_proved([True], 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_tolerance_scales_with_the_magnitudes_compared(dtype):
    """A gap proves only beyond SLACK eps (|b| + |t|): half of it proves nothing, twice it proves, at magnitudes
    from 1e-3 to 1e6 (a fixed absolute tolerance would fail one end or the other)."""
    t = torch.tensor([1e-3, 1.0, 1e6], dtype=dtype)
    scale = decide.SLACK * torch.finfo(dtype).eps * 2 * t
    assert not decide.proved(decide.margins(t + scale / 2, t)).any()
    assert decide.proved(decide.margins(t + 2 * scale, t)).all()
    assert decide.proved(decide.margins(-t + 2 * scale, -t)).all()
