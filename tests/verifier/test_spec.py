"""Specifications: robustness clauses, eps parsing, batching with differing clause structures."""

import pytest
import torch

from verifier.spec import OutputSpec, Property, PropertyBatch, SpecError, linf_ball, parse_eps, robustness_spec


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
    assert torch.allclose(lo, torch.tensor([0.0, 0.4, 0.87])) and torch.allclose(hi, torch.tensor([0.15, 0.6, 1.0]))


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
