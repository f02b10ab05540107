"""Coordinate-wise activations other than ReLU: LeakyReLU, Sigmoid and Tanh.

Each neuron with input bounds [l, u] is bounded by two lines,
``a_l x + b_l <= y <= a_u x + b_u`` (:class:`LinearBounds`).

- **LeakyReLU** ``max(x, alpha x)`` with ``0 <= alpha <= 1`` is convex: the
  upper line is the chord, the lower line ``y >= s x`` holds for every
  ``s in [alpha, 1]`` (default: 1 where ``u > -l``, else alpha, DeepPoly's
  choice for ReLU; optimisable).
- **Sigmoid** and **Tanh** are S-shaped: convex below 0, concave above, f'
  even and decreasing on x >= 0. For *any* slope a the tightest lines of that
  slope are ``a x + min / max of f(x) - a x over [l, u]``, whose extremes lie at
  l, u or where ``f'(x) = a`` (at most two points, +-x_a): so every slope
  gives sound lines, and the slopes are free parameters in [0, f'(0)],
  kept in units of f'(0) (in [0, 1], like the ReLU slopes: the optimiser
  moves every parameter by about its learning rate per step, and Sigmoid's
  f'(0) = 1/4 would otherwise make the shared rate four times as coarse).
  The default slopes are those of least area between line and f: the chord
  where f bends away from the line on [l, u], the tangent at the midpoint
  where it bends towards it, and around 0 a line through an end point tangent
  to f (far tighter than DeepPoly's ``min(f'(l), f'(u))`` when one end is
  saturated).
  Intercepts are computed in float64 and widened by a few units in the last
  place of the bounds' dtype (relative to the intercept), and the interval
  image likewise, because the model's runtime rounds f itself.
  Branch-and-bound (:mod:`domains.bab`) splits their input intervals: at 0
  when it lies inside (each part is then convex or concave), else at the
  midpoint, while the lines lie further from f than rounding (``splittable``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nncert.domains.network import Activation, Add, ElementwiseAffine, Network, Relaxation, ReLU

ULPS = 8.0  # widening of the S-shaped functions' intercepts and interval images, in units of eps of the dtype


@dataclass
class LinearBounds(Relaxation):
    """``lower_slope x + lower_intercept <= y <= upper_slope x + upper_intercept``, each broadcastable to A."""

    lower_slope: Tensor
    lower_intercept: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor

    def backward(self, A: Tensor) -> tuple[Tensor, Tensor]:
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        A_x = pos * self.lower_slope + neg * self.upper_slope
        const = pos * self.lower_intercept + neg * self.upper_intercept
        return A_x, const.flatten(2).sum(-1)


def _projected(op: Activation, params: Tensor) -> Tensor:
    """``op.project(params)`` as a value, with the identity as gradient: the defaults sit on the bounds of the
    sound set (e.g. LeakyReLU's slopes alpha and 1), where a clamp's gradient is zero."""
    return params + (op.project(params) - params).detach()


def _rows(t: Tensor) -> Tensor:
    """(N, *s) -> (N, 1, *s): broadcast over the K rows of a back-substitution."""
    return t.unsqueeze(1)


@dataclass(repr=False)
class LeakyReLU(Activation):
    """``max(x, alpha x)`` coordinate-wise, 0 <= alpha <= 1 (ONNX LeakyRelu, torch nn.LeakyReLU)."""

    coordinatewise = True

    alpha: float = 0.01

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"LeakyReLU alpha={self.alpha} is not supported (only 0 <= alpha <= 1)")

    def forward(self, x: Tensor) -> Tensor:
        return torch.maximum(x, self.alpha * x)

    def bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(lower), self.forward(upper)

    def loose(self, lower: Tensor, upper: Tensor) -> Tensor:
        return (lower < 0) & (upper > 0)

    def init_params(self, lower: Tensor, upper: Tensor) -> Tensor:
        """The lower line's slope (N, *s): 1 where u > -l, else alpha."""
        return torch.where(upper > -lower, 1.0, self.alpha).to(lower)

    def project(self, params: Tensor) -> Tensor:
        return params.clamp(self.alpha, 1.0)

    def relax(self, lower: Tensor, upper: Tensor, params: Tensor | None = None) -> LinearBounds:
        lo, hi = _rows(lower), _rows(upper)
        slope = self.init_params(lo, hi) if params is None else _projected(self, params)
        unstable = (lo < 0) & (hi > 0)
        lower_slope = torch.where(unstable, slope, torch.where(hi <= 0, self.alpha, 1.0).to(lo))
        chord = (hi - self.alpha * lo) / (hi - lo).clamp_min(1e-12)
        upper_slope = torch.where(unstable, chord, lower_slope)
        upper_intercept = torch.where(unstable, (self.alpha - chord) * lo, torch.zeros_like(lo))
        return LinearBounds(lower_slope, torch.zeros_like(lo), upper_slope, upper_intercept)

    def __repr__(self) -> str:
        return f"LeakyReLU({self.alpha})"


def relu_form(net: Network) -> Network:
    """The same function with every LeakyReLU written as ``alpha x + (1 - alpha) relu(x)``.

    Branch-and-bound then splits LeakyReLUs like ReLUs (on the sign), and the
    multi-neuron constraints and intermediate searches cover them; the
    back-substituted relaxation is the same as LeakyReLU's own (slopes
    ``alpha + (1 - alpha) s``, s in [0, 1], below; the chord above).
    """
    if not any(isinstance(node.op, LeakyReLU) for node in net.nodes):
        return net
    ops: list = []
    index = {0: 0}

    def scaled(factor: float, source: int) -> int:
        constant = torch.tensor(factor, dtype=net.dtype, device=net.device)
        ops.append((ElementwiseAffine(constant, torch.zeros_like(constant)), (source,)))
        return len(ops)

    for i, node in enumerate(net.nodes[1:], start=1):
        inputs = tuple(index[j] for j in node.inputs)
        if isinstance(node.op, LeakyReLU):
            ops.append((ReLU(), inputs))
            ops.append((Add(), (scaled(1.0 - node.op.alpha, len(ops)), scaled(node.op.alpha, inputs[0]))))
        else:
            ops.append((node.op, inputs))
        index[i] = len(ops)
    return Network(net.input_shape, ops)


class SShaped(Activation):
    """Sigmoid-like: increasing, convex below 0 and concave above, f' even; see the module docstring."""

    coordinatewise = True
    peak: float  # f'(0), the largest slope

    def function(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def slope_point(self, a: Tensor) -> Tensor:
        """x_a >= 0 with f'(x_a) = a, for 0 < a <= peak (inf for a = 0), float64."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x)

    def bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        slack = ULPS * torch.finfo(lower.dtype).eps
        return self.function(lower) - slack, self.function(upper) + slack

    def init_params(self, lower: Tensor, upper: Tensor) -> Tensor:
        """The default slopes of the lower and upper line in units of f'(0), (N, 2, *s): those of least area
        between line and f over [l, u]; the lower line's on [l, u] is the upper line's on [-u, -l], by the
        symmetry f(-x) = 2 f(0) - f(x) (a point reflection keeps slopes)."""
        # infinite bounds get slope 0 in relax(); finite stand-ins keep the arithmetic free of NaN
        lo, hi = (torch.nan_to_num(t.double(), posinf=1e30, neginf=-1e30) for t in (lower, upper))
        slopes = torch.stack([self.least_area_slope(-hi, -lo), self.least_area_slope(lo, hi)], 1)
        return self.project(torch.nan_to_num(slopes, nan=0.0) / self.peak).to(lower.dtype)

    def least_area_slope(self, lo: Tensor, hi: Tensor) -> Tensor:
        """The slope of the upper line of least area over f on [lo, hi] (float64, same shape).

        The area of the tightest line of slope a is, up to a constant, its
        height at the midpoint m, whose derivative in a is m - x_a, x_a where
        the line touches f: the least area is where the touching point passes
        m. With d >= 0 the point where the tangent from (lo, f(lo)) touches f
        (clipped to hi): the chord where f is convex on [lo, hi]; that line
        from lo where d >= m; else the tangent at m (f concave there).
        """
        mid = (lo + hi) / 2
        touch = self.tangent_from(lo.clamp(max=0.0), hi)
        through = (self.function(touch) - self.function(lo)) / (touch - lo)
        chord = (self.function(hi) - self.function(lo)) / (hi - lo)
        return torch.where(hi <= 0, chord, torch.where(touch >= mid, through, self.derivative(mid)))

    def tangent_from(self, lo: Tensor, hi: Tensor) -> Tensor:
        """min(d, hi) for d >= 0 where f's tangent passes through (lo, f(lo)), lo <= 0 (float64, same shape):
        the root of g(d) = f(d) + f'(d) (lo - d) - f(lo), increasing on d >= 0 (f'' < 0 there) with g(0) <= 0
        (f convex below 0), by bisection; at or just above the root, and any slope is sound."""
        left, right = torch.zeros_like(lo), hi.clamp(min=0.0)
        for _ in range(40):
            d = (left + right) / 2
            above = self.function(d) + self.derivative(d) * (lo - d) - self.function(lo) > 0
            left, right = torch.where(above, left, d), torch.where(above, d, right)
        return right

    def project(self, params: Tensor) -> Tensor:
        return torch.nan_to_num(params, nan=0.0).clamp(0.0, 1.0)

    def relax(self, lower: Tensor, upper: Tensor, params: Tensor | None = None) -> LinearBounds:
        lo, hi = _rows(lower.double()), _rows(upper.double())
        slopes = self.peak * (_rows(self.init_params(lower, upper)) if params is None else _projected(self, params))
        finite = torch.isfinite(lo) & torch.isfinite(hi)
        a_l, a_u = (torch.where(finite, slopes[:, :, j].double(), 0.0) for j in (0, 1))
        b_l, b_u = self.offset(a_l, lo, hi, lowest=True), self.offset(a_u, lo, hi, lowest=False)
        eps = ULPS * torch.finfo(lower.dtype).eps
        b_l, b_u = b_l - eps * (1 + b_l.abs()), b_u + eps * (1 + b_u.abs())
        return LinearBounds(a_l.to(lower.dtype), b_l.to(lower.dtype), a_u.to(lower.dtype), b_u.to(lower.dtype))

    def split_point(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Where branch-and-bound splits [l, u] (same shape): at 0 where l < 0 < u, so that f is convex on one
        part and concave on the other (each part's lines are then a tangent and the chord), else at the midpoint."""
        return torch.where((lower < 0) & (upper > 0), torch.zeros_like(lower), (lower + upper) / 2)

    def gaps(self, lower: Tensor, upper: Tensor, lines: LinearBounds) -> tuple[Tensor, Tensor]:
        """The largest distance of the lower and of the upper line from f on [l, u], float64: bounds (N, *s),
        lines (N, K, *s) -> (N, K, *s) each. A bound loses at most a neuron's coefficient times the gap of the
        line it uses there."""
        lo, hi = _rows(lower.double()), _rows(upper.double())
        below = self.offset(lines.lower_slope.double(), lo, hi, lowest=False) - lines.lower_intercept.double()
        above = lines.upper_intercept.double() - self.offset(lines.upper_slope.double(), lo, hi, lowest=True)
        return below, above

    def splittable(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Where splitting [l, u] can still tighten the relaxation (N, *s) bool: finite bounds whose default
        lines lie further from f than twice the widening of their intercepts."""
        lines = self.relax(lower, upper)
        below, above = (gap[:, 0] for gap in self.gaps(lower, upper, lines))
        widening = ULPS * torch.finfo(lower.dtype).eps * (2 + lines.lower_intercept.abs() + lines.upper_intercept.abs())
        return torch.isfinite(lower) & torch.isfinite(upper) & (below + above > 2 * widening[:, 0].double())

    def offset(self, a: Tensor, lo: Tensor, hi: Tensor, lowest: bool) -> Tensor:
        """min (``lowest``) or max of f(x) - a x over [lo, hi], float64: at lo, hi or +-x_a inside.

        The candidate points carry no gradient: by the envelope theorem the
        extreme's derivative in a is -x at the extreme point.
        """
        with torch.no_grad():
            x_a = self.slope_point(a)
            points = [lo, hi, torch.minimum(torch.maximum(x_a, lo), hi), torch.minimum(torch.maximum(-x_a, lo), hi)]
        values = torch.stack([self.function(x) - a * torch.where(a == 0, 0.0, x) for x in points])
        return values.amin(0) if lowest else values.amax(0)


@dataclass(repr=False)
class Sigmoid(SShaped):
    """``1 / (1 + exp(-x))`` coordinate-wise (ONNX Sigmoid, torch nn.Sigmoid)."""

    peak = 0.25

    def function(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def derivative(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return s * (1 - s)

    def slope_point(self, a: Tensor) -> Tensor:
        # s (1 - s) = a with s >= 1/2; 1 - s in a form without cancellation for small a
        root = torch.sqrt((1 - 4 * a).clamp_min(0.0))
        return torch.log1p(root) - math.log(2.0) - torch.log(2 * a / (1 + root))


@dataclass(repr=False)
class Tanh(SShaped):
    """``tanh(x)`` coordinate-wise (ONNX Tanh, torch nn.Tanh)."""

    peak = 1.0

    def function(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def derivative(self, x: Tensor) -> Tensor:
        return 1 - torch.tanh(x) ** 2

    def slope_point(self, a: Tensor) -> Tensor:
        # 1 - t^2 = a with t >= 0; x = atanh(t) = (log(1 + t) - log(1 - t)) / 2, 1 - t = a / (1 + t)
        t = torch.sqrt((1 - a).clamp_min(0.0))
        return (torch.log1p(t) - torch.log(a / (1 + t))) / 2
