"""SABR's propagation region: inside the eps-ball and the valid range; the whole ball at lambda = 1."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncert.training.models import build_model
from nncert.training.regions import linf_box, sabr_region, small_box


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31), eps=st.floats(0.0, 0.5), lam=st.floats(0.0, 1.0))
def test_small_box_inside_ball_and_valid_range(seed, eps, lam):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 5, 5, generator=g)
    x[0] = 0.0  # pixels at the ends of the range
    x[1] = 1.0
    centre = x + 3 * eps * (2 * torch.rand(x.shape, generator=g) - 1)  # anywhere, even outside the ball
    tau = lam * eps
    lower, upper = small_box(centre, x, eps, tau)
    ball_lower, ball_upper = linf_box(x, eps)
    assert (lower <= upper).all()
    assert (lower >= ball_lower).all() and (upper <= ball_upper).all()
    assert (lower >= 0).all() and (upper <= 1).all()
    assert (lower >= x - eps - 1e-7).all() and (upper <= x + eps + 1e-7).all()
    assert (upper - lower <= 2 * tau + 1e-6).all()
    # full radius wherever the clipped ball is wide enough
    wide = ball_upper - ball_lower >= 2 * tau
    assert torch.allclose((upper - lower)[wide], torch.full_like(x, 2 * tau)[wide], atol=1e-6)


def test_small_box_keeps_a_centre_already_inside():
    x = torch.full((1, 1, 2, 2), 0.5)
    centre = x + 0.01
    lower, upper = small_box(centre, x, eps=0.1, tau=0.02)
    assert torch.allclose((lower + upper) / 2, centre)


def test_radius_eps_gives_the_clipped_ball_for_any_centre():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 6, 6, generator=g)
    centre = torch.rand(x.shape, generator=g)
    for got, want in zip(small_box(centre, x, 0.1, 0.1), linf_box(x, 0.1)):
        assert torch.allclose(got, want, atol=1e-6)


def test_sabr_region_is_inside_the_ball_and_restores_train_mode():
    torch.manual_seed(0)
    model = build_model("cnn5", "mnist")
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    model.train()
    lower, upper = sabr_region(model, x, y, eps=0.1, lam=0.3, steps=3)
    ball_lower, ball_upper = linf_box(x, 0.1)
    assert model.training
    assert (lower >= ball_lower).all() and (upper <= ball_upper).all()
    assert (upper - lower <= 2 * 0.03 + 1e-6).all()
    for got, want in zip(sabr_region(model, x, y, eps=0.1, lam=1.0, steps=3), linf_box(x, 0.1)):
        assert torch.equal(got, want)
