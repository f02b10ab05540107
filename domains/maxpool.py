"""2-D max pooling as an :class:`~domains.network.Activation` of the IR.

Each output is the max of a window of its input. Its interval image is exact
(the max of the window's lower and of its upper bounds). Its linear
relaxation is DeepPoly's (Singh et al. 2019): with j the window's input of
largest lower bound, ``y >= x_j``; if ``l_j`` is at least every other input's
upper bound, ``y = x_j`` exactly, otherwise ``y <= max_i u_i``. Padding is
-inf, as in ONNX and torch: padded positions never win a window.

The lower line's choice is optimisable: with parameters (logits per window
input), ``y >= sum_i w_i x_i`` for the softmax weights w, which holds for any
weights (the max is at least every convex combination); the default logits
put almost all weight on j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nncert.domains.network import Activation, Relaxation

CHOICE_LOGIT = 6.0  # the default lower line's logit of the chosen input (weight 0.99 in a 2x2 window)


@dataclass
class MaxPoolBounds(Relaxation):
    """``x_choice <= y`` and ``y <= x_choice`` where ``exact``, else ``y <= upper``; (N, 1, C, L) each.

    ``choice`` is the flat index of the chosen input in its channel's plane, ``plane`` = (H, W) of the input.
    With ``weights`` (N, K, C, kk, L) the lower line is ``y >= sum_i w_i x_i`` over the window entries instead,
    ``positions`` (kk, L) their flat indices in the plane (-1: padding, weight 0).
    """

    choice: Tensor
    exact: Tensor
    upper: Tensor
    plane: tuple[int, int]
    weights: Tensor | None = None
    positions: Tensor | None = None

    def backward(self, A: Tensor) -> tuple[Tensor, Tensor]:
        n, k, c = A.shape[:3]
        A = A.flatten(3)  # (N, K, C, L)
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        const = torch.where(self.exact | (neg == 0), 0.0, neg * self.upper).flatten(2).sum(-1)
        A_x = A.new_zeros(n, k, c, self.plane[0] * self.plane[1])
        if self.weights is None:
            A_x.scatter_add_(3, self.choice.expand(n, k, c, -1), pos + neg * self.exact)
        else:
            A_x.scatter_add_(3, self.choice.expand(n, k, c, -1), neg * self.exact)
            window = (pos.unsqueeze(3) * self.weights).flatten(3)  # (N, K, C, kk * L)
            A_x.scatter_add_(3, self.positions.clamp(min=0).flatten().expand(n, k, c, -1), window)
        return A_x.reshape(n, k, c, *self.plane), const


@dataclass(repr=False)
class MaxPool2d(Activation):
    """Max pooling of (C, H, W) inputs; pads = (left, right, top, bottom) of -inf."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)

    def _padded(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pads, value=-torch.inf) if any(self.pads) else x

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(self._padded(x), self.kernel, self.stride, 0, self.dilation)

    def bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(lower), self.forward(upper)

    def windows(self, x: Tensor) -> Tensor:
        """The window of every output: (N, C, H, W) -> (N, C, kh * kw, L)."""
        cols = F.unfold(self._padded(x), self.kernel, self.dilation, 0, self.stride)
        return cols.reshape(x.shape[0], x.shape[1], -1, cols.shape[-1])

    def positions(self, like: Tensor) -> Tensor:
        """Flat index in the input plane of every window entry (kh * kw, L), -1 for padding."""
        h, w = self.in_shapes[0][1:]
        plane = torch.arange(h * w, dtype=torch.float64, device=like.device).reshape(1, 1, h, w)
        padded = F.pad(plane, self.pads, value=-1.0) if any(self.pads) else plane
        return F.unfold(padded, self.kernel, self.dilation, 0, self.stride)[0].long()

    def init_params(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Logits of the lower line's weights (N, C, kk, L): CHOICE_LOGIT on the input of largest lower bound."""
        lo = self.windows(lower)
        return torch.zeros_like(lo).scatter(2, lo.argmax(2, keepdim=True), CHOICE_LOGIT)

    def relax(self, lower: Tensor, upper: Tensor, params: Tensor | None = None) -> MaxPoolBounds:
        lo, hi = self.windows(lower), self.windows(upper)  # (N, C, kk, L)
        best, choice = lo.max(2, keepdim=True)
        others = hi.scatter(2, choice, -torch.inf).amax(2)
        positions = self.positions(lower)
        where = positions.expand(*lo.shape).gather(2, choice).squeeze(2)  # (N, C, L)
        exact = best.squeeze(2) >= others
        bounds = MaxPoolBounds(where.unsqueeze(1), exact.unsqueeze(1), hi.amax(2).unsqueeze(1), self.in_shapes[0][1:])
        if params is not None:
            bounds.weights = torch.softmax(params.masked_fill(positions < 0, -torch.inf), dim=3)
            bounds.positions = positions
        return bounds

    def __repr__(self) -> str:
        return f"MaxPool2d({self.kernel}, stride={self.stride}, pads={self.pads}, dilation={self.dilation})"
