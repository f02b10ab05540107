"""AbsCert (Zhang et al., CVPR 2023) as a baseline: training on interval abstractions of the input.

AbsCert divides the pixel range [0, 1] into bins of width eta and replaces every
pixel x by the edges of its bin, ``lower = k eta`` and ``upper = lower + eta`` with
``k = min(floor(x / eta), k_max)`` (channels doubled; the clamp puts x = 1 into
the last bin, ``k_max = ceil(1 / eta) - 1``, as the reference implementation
does); the network is trained with the ordinary cross-entropy on the bin edges
of the clean training images. Its "verification" classifies the clean
image's bins: every point of the same bins gets the same label. That is not an
L-inf certificate. A pixel within eps of a bin edge moves to the neighbouring bin
(eta >= 2 eps, the paper's setting, makes that at most one neighbour), where the
network may answer differently.

Here the abstraction is the model's first layer, :class:`BinEdges`, exported to
ONNX with standard ops (Div, Floor, Clip, Mul, Add, Concat) and imported as IR
ops whose Floor and Clip are monotone ops that every domain bounds by intervals: for each
pixel the bins reachable within eps give an input box over the bin edges, and
Box / DeepPoly / MN-BaB / MILP certify the rest of the network soundly. PGD
attacks the images themselves, through a straight-through floor gradient, and
every counterexample is confirmed on the real model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from nncert.domains.network import (
    Clip,
    Concat,
    ElementwiseAffine,
    Floor,
    Op,
    straight_through_clamp,
    straight_through_floor,
)


class BinEdges(nn.Module):
    """x (N, C, ...) -> the edges of x's bins of width eta, (N, 2C, ...): lower edges, then upper edges."""

    def __init__(self, eta: float):
        super().__init__()
        if not eta > 0:
            raise ValueError(f"the bin width eta must be positive, got {eta}")
        self.register_buffer("eta", torch.tensor(float(eta)))
        self.last_bin = float(math.ceil(1 / eta - 1e-9) - 1)  # k_max: the bin holding x = 1

    def forward(self, x: Tensor) -> Tensor:
        bins = straight_through_clamp(straight_through_floor(x / self.eta), None, self.last_bin)
        lower = bins * self.eta
        return torch.cat([lower, lower + self.eta], 1)

    def to_ir(self, emit: Callable[[Op, tuple[int, ...]], int], node: int) -> int:
        """The same map as IR ops: x * (1 / eta) -> Floor -> Clip -> * eta (lower) -> + eta (upper) -> Concat."""
        one, zero = torch.ones_like(self.eta), torch.zeros_like(self.eta)
        bins = emit(Floor(), (emit(ElementwiseAffine(1 / self.eta, zero), (node,)),))
        bins = emit(Clip(None, self.last_bin), (bins,))
        lower = emit(ElementwiseAffine(self.eta, zero), (bins,))
        upper = emit(ElementwiseAffine(one, self.eta), (lower,))
        return emit(Concat(0, 2), (lower, upper))

    def extra_repr(self) -> str:
        return f"eta={self.eta.item():g}"


def default_bin_width(eps: float) -> float:
    """The paper's setting eta = 2 eps: an eps-ball then meets at most two bins per pixel."""
    return 2 * eps


def claimed_vs_sound(claimed: Tensor, status: list[str]) -> dict[str, float | int]:
    """AbsCert's claimed certified accuracy against the sound one, over the same n samples.

    ``claimed`` (n,) bool: the clean image's bins are classified correctly (AbsCert's
    check, i.e. the abstracted model's natural accuracy); ``status``: each sample's
    status from ``certify``. Returns the accuracies, the number of claimed samples
    that are not soundly certified (``gap``) and, among those, the ones with a
    confirmed counterexample (``refuted``: AbsCert's claim is wrong there).
    """
    if len(status) != len(claimed):
        raise ValueError(f"{len(claimed)} claims but {len(status)} statuses")
    certified = torch.tensor([s == "certified" for s in status], dtype=torch.bool)
    falsified = torch.tensor([s == "falsified" for s in status], dtype=torch.bool)
    if bool((certified & ~claimed).any()):
        raise ValueError("a sample is certified although its clean bins are misclassified")
    n = len(status)
    return {"n": n, "claimed": claimed.sum().item() / max(n, 1), "sound": certified.sum().item() / max(n, 1),
            "gap": int((claimed & ~certified).sum()), "refuted": int((claimed & falsified).sum())}
