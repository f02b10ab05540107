"""LeakyReLU, Sigmoid and Tanh: interval images and linear relaxations hold on a dense grid of every interval
(narrow, wide, infinite, on either side of 0 and across it), for the default and for random parameters."""

import pytest
import torch

from nncert.domains.activations import LeakyReLU, Sigmoid, Tanh

OPS = {"sigmoid": Sigmoid(), "tanh": Tanh(), "leakyrelu": LeakyReLU(0.1), "leakyrelu-0": LeakyReLU(0.0)}


def intervals(dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, n) lower and upper bounds covering the cases of the relaxations."""
    g = torch.Generator().manual_seed(0)
    centre = torch.randn(200, generator=g) * 4
    width = torch.rand(200, generator=g) ** 3 * 20
    lo = torch.cat([centre - width / 2, torch.tensor([-3.0, 0.5, -1e-7, -50.0, -1e4, 2.0, -0.3, 0.0, -5.0, 8.0])])
    hi = torch.cat([centre + width / 2, torch.tensor([-1.0, 7.0, 1e-7, 60.0, 1e4, 2.0 + 1e-6, 0.0, 0.0, 40.0, 8.0])])
    return lo[None].to(dtype), hi[None].to(dtype)


def grid(lo: torch.Tensor, hi: torch.Tensor, n: int = 2001) -> torch.Tensor:
    """n points of every interval, its ends included, in float64: (n, 1, m)."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)[:, None, None]
    return lo.double() + (hi.double() - lo.double()) * t


def random_params(op, lo, hi, k: int, g) -> torch.Tensor:
    """k random parameter rows (1, k, *p), some outside the sound set (the op must project them)."""
    init = op.init_params(lo, hi)
    return torch.rand(1, k, *init.shape[1:], generator=g, dtype=lo.dtype) * 1.4 - 0.2


def assert_lines_hold(op, lo, hi, relaxation) -> None:
    """Both lines hold at every grid point, evaluated in float64. LeakyReLU's lines are exact in real
    arithmetic and rounded to the dtype like a ReLU's (the decision rule's tolerance covers them); the
    S-shaped functions' intercepts are widened past their rounding and must hold as they are."""
    x = grid(lo, hi)  # (n, 1, m)
    y = op.forward(x)
    slack = 1e-6 * (1 + x.abs().unsqueeze(1)) if isinstance(op, LeakyReLU) else 0.0
    lower = relaxation.lower_slope.double() * x.unsqueeze(1) + relaxation.lower_intercept.double()
    upper = relaxation.upper_slope.double() * x.unsqueeze(1) + relaxation.upper_intercept.double()
    assert (lower <= y.unsqueeze(1) + slack).all() and (upper >= y.unsqueeze(1) - slack).all()


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interval_image_holds(name, dtype):
    op, (lo, hi) = OPS[name], intervals(dtype)
    low, high = op.bounds(lo, hi)
    y = op.forward(grid(lo, hi).to(dtype))
    assert (y >= low).all() and (y <= high).all()


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_relaxation_holds(name, dtype):
    op, (lo, hi) = OPS[name], intervals(dtype)
    assert_lines_hold(op, lo, hi, op.relax(lo, hi))


@pytest.mark.parametrize("name", OPS)
def test_every_parameter_gives_a_sound_relaxation(name):
    op, (lo, hi) = OPS[name], intervals()
    params = random_params(op, lo, hi, 6, torch.Generator().manual_seed(1))
    assert_lines_hold(op, lo, hi, op.relax(lo, hi, params))


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_s_shaped_lines_touch_the_function(name):
    """The intercepts are the tightest for their slopes (up to the rounding widening): each line meets f."""
    op, (lo, hi) = OPS[name], intervals(torch.float64)
    params = random_params(op, lo, hi, 4, torch.Generator().manual_seed(2))
    relaxation = op.relax(lo, hi, params)
    x = grid(lo, hi, 20001).unsqueeze(1)
    y = op.forward(x)
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    below = (y - relaxation.lower_slope * x - relaxation.lower_intercept).amin(0)
    above = (relaxation.upper_slope * x + relaxation.upper_intercept - y).amin(0)
    assert (below[finite.expand_as(below)] < 1e-4).all() and (above[finite.expand_as(above)] < 1e-4).all()


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_s_shaped_default_lines_on_one_side_of_0(name):
    """On the convex side (u <= 0) the upper line is the secant and the lower the tangent at the midpoint."""
    op = OPS[name]
    lo, hi = torch.tensor([[-3.0]], dtype=torch.float64), torch.tensor([[-1.0]], dtype=torch.float64)
    r = op.relax(lo, hi)
    f, mid = op.forward, (lo + hi) / 2
    secant = (f(hi) - f(lo)) / (hi - lo)
    assert torch.allclose(r.upper_slope[0], secant) and torch.allclose(r.upper_intercept[0], f(lo) - secant * lo)
    tangent = op.derivative(mid)
    assert torch.allclose(r.lower_slope[0], tangent) and torch.allclose(r.lower_intercept[0], f(mid) - tangent * mid)


def line_at_midpoint(relaxation, lo, hi) -> tuple[torch.Tensor, torch.Tensor]:
    """The lower and upper lines' values at the midpoint of [l, u]: the area between line and f, up to a
    constant of the interval."""
    mid = (lo + hi) / 2
    return (relaxation.lower_slope * mid + relaxation.lower_intercept,
            relaxation.upper_slope * mid + relaxation.upper_intercept)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_s_shaped_default_lines_enclose_the_least_area(name):
    """No slope in [0, f'(0)] gives a lower line higher, or an upper line lower, at the midpoint (i.e. of less
    area with f) than the default's; DeepPoly's min(f'(l), f'(u)) among them, far looser around 0 with a
    saturated end."""
    op, (lo, hi) = OPS[name], intervals(torch.float64)
    finite = (torch.isfinite(lo) & torch.isfinite(hi) & (hi > lo))[0]
    lo, hi = lo[:, finite], hi[:, finite]
    best_lower, best_upper = line_at_midpoint(op.relax(lo, hi), lo, hi)
    for a in torch.linspace(0, 1, 41, dtype=torch.float64):
        params = torch.full((1, 1, 2, lo.shape[1]), float(a), dtype=torch.float64)
        lower, upper = line_at_midpoint(op.relax(lo, hi, params), lo, hi)
        assert (best_lower >= lower - 1e-9).all() and (best_upper <= upper + 1e-9).all()
    lo = torch.tensor([[-6.0, -1.0, -8.0]], dtype=torch.float64)
    hi = torch.tensor([[1.0, 5.0, 8.0]], dtype=torch.float64)
    deeppoly = (torch.minimum(op.derivative(lo), op.derivative(hi)) / op.peak).expand(2, -1)[None, None]
    ours, theirs = line_at_midpoint(op.relax(lo, hi), lo, hi), line_at_midpoint(op.relax(lo, hi, deeppoly), lo, hi)
    assert (ours[1] - ours[0] < 0.8 * (theirs[1] - theirs[0])).all()


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_s_shaped_gaps_are_the_lines_largest_distances_from_f(name):
    """gaps() is the largest distance of each line from f over [l, u] (a grid's maximum stays within it)."""
    op, (lo, hi) = OPS[name], intervals(torch.float64)
    finite = (torch.isfinite(lo) & torch.isfinite(hi))[0]
    lo, hi = lo[:, finite], hi[:, finite]
    relaxation = op.relax(lo, hi, random_params(op, lo, hi, 3, torch.Generator().manual_seed(3)))
    below, above = op.gaps(lo, hi, relaxation)
    x = grid(lo, hi, 20001).unsqueeze(1)
    y = op.forward(x)
    below_grid = (y - relaxation.lower_slope * x - relaxation.lower_intercept).amax(0)
    above_grid = (relaxation.upper_slope * x + relaxation.upper_intercept - y).amax(0)
    assert (below >= below_grid - 1e-9).all() and (above >= above_grid - 1e-9).all()
    width = (hi - lo).unsqueeze(1)
    assert (below <= below_grid + 1e-3 * width).all() and (above <= above_grid + 1e-3 * width).all()


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_s_shaped_split_at_zero_tightens_both_parts(name):
    """Split at 0 when l < 0 < u (else the midpoint), each part's default lines lie closer to f than the
    whole interval's; intervals too narrow to gain, and infinite ones, are not split."""
    op = OPS[name]
    lo = torch.tensor([[-4.0, -1.0, 0.5, -6.0]], dtype=torch.float64)
    hi = torch.tensor([[3.0, 0.2, 2.5, -2.0]], dtype=torch.float64)
    point = op.split_point(lo, hi)
    assert point.tolist() == [[0.0, 0.0, 1.5, -4.0]]
    whole = sum(op.gaps(lo, hi, op.relax(lo, hi)))
    for part in ((lo, point), (point, hi)):
        gap = sum(op.gaps(*part, op.relax(*part)))
        assert (gap < whole).all()
    assert (whole > 0.02).all() and op.splittable(lo, hi).all()
    narrow = torch.tensor([[0.3, -torch.inf, -1e-6]]), torch.tensor([[0.3 + 1e-4, 1.0, 1e-6]])
    assert op.splittable(*narrow).tolist() == [[False, False, False]]
    # float64 rounds far less: the first is worth splitting there; around the inflection point f is nearly
    # linear (the gap grows with the cube of the width)
    assert op.splittable(*(t.double() for t in narrow)).tolist() == [[True, False, False]]


def test_leaky_relu_lines():
    op = LeakyReLU(0.25)
    lo, hi = torch.tensor([[-2.0, 1.0, -3.0, -1.0]]), torch.tensor([[1.0, 2.0, -1.0, 3.0]])
    r = op.relax(lo, hi)
    # unstable, u < -l: lower slope alpha; active: identity; inactive: alpha x; unstable, u > -l: slope 1
    assert r.lower_slope[0, 0].tolist() == [0.25, 1.0, 0.25, 1.0]
    chord = (1.0 - 0.25 * -2.0) / 3.0
    assert r.upper_slope[0, 0, 0].item() == pytest.approx(chord)
    assert r.upper_intercept[0, 0, 0].item() == pytest.approx(-2.0 * (0.25 - chord))
    assert op.project(torch.tensor([0.0, 0.5, 2.0])).tolist() == [0.25, 0.5, 1.0]


def test_leaky_relu_rejects_slopes_outside_0_1():
    with pytest.raises(ValueError, match="alpha"):
        LeakyReLU(1.5)
