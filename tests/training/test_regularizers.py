"""Shi et al.'s warm-up regularisers on hand-made bounds, and on a real propagation."""

import math

import pytest
import torch

from nncert.domains.box import propagate
from nncert.domains.from_torch import network_from_torch
from nncert.training.models import build_model, ibp_init
from nncert.training.regularizers import _relu_balance, _tightness, l1_penalty, warmup_regularizer


def test_tightness_is_zero_once_widths_do_not_grow_beyond_one_over_tol():
    input_radius = torch.tensor(1.0)
    lower = -torch.ones(4, 3)
    assert _tightness(input_radius, lower, -lower, tol=0.5).item() == 0.0  # ratio 1 >= tol
    assert _tightness(input_radius, 4 * lower, -4 * lower, tol=0.5).item() == pytest.approx(0.5)  # ratio 1/4


def test_balance_is_zero_for_symmetric_active_and_inactive_neurons():
    centre = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    assert _relu_balance(centre - 0.5, centre + 0.5, tol=0.5).item() == 0.0


def test_balance_penalises_mostly_inactive_neurons():
    centre = torch.tensor([[0.1, -3.0, -2.0, -1.0]])
    assert _relu_balance(centre - 0.05, centre + 0.05, tol=0.5).item() > 0.5


def test_balance_is_dropped_when_a_ratio_is_undefined():
    centre = torch.tensor([[1.0, 2.0]])  # no inactive neuron
    assert _relu_balance(centre - 0.1, centre + 0.1, tol=0.5).item() == 0.0


def test_warmup_regularizer_on_a_network_is_finite_and_differentiable():
    torch.manual_seed(0)
    model = build_model("cnn3", "mnist")
    ibp_init(model)
    x = torch.rand(8, 1, 28, 28)
    net = network_from_torch(model, (1, 28, 28))
    bounds = propagate(net, x - 0.05, x + 0.05)
    reg = warmup_regularizer(net, bounds, tol=0.5)
    assert torch.isfinite(reg) and reg >= 0
    reg.backward()
    assert model[1].weight.grad is not None


def test_l1_penalty():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
        model.bias.fill_(-0.5)
    assert l1_penalty(model).item() == pytest.approx(3.5)
    assert math.isclose(l1_penalty(torch.nn.Sequential(model, model)).item(), 3.5)
