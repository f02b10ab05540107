"""Counterexample search: PGD on the property margin, every hit re-checked concretely.

The property margin of an output y is ``min over clauses of max over the
clause's rows of (C_j y - d_j)``; a point with margin <= 0 satisfies every row
of some clause, i.e. it is a counterexample. PGD minimises it over the input
box (margin loss, several restarts): the first restart from the box centre,
the others from output-diversified starts (ODI, Tashiro et al. 2020). Uniform
starts are not enough: on VNN-COMP's mnist_fc 256x2 prop_2_0.03 the margin is
flat around the centre and every uniform restart climbs to the same corner,
while the counterexample is a corner that differs from it in 3/4 of the pixels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from nncert.domains.network import Network
from nncert.domains.pgd import pgd_maximize
from nncert.verifier.spec import PropertyBatch

# concrete oracle: inputs (N, *input_shape) -> outputs (N, n_out), e.g. onnxruntime
Oracle = Callable[[Tensor], Tensor]


def confirmed(batch: PropertyBatch, x: Tensor, oracle: Oracle | None, net: Network) -> Tensor:
    """True where x (N, *in) lies in the input box and its concrete output violates the property: (N,)."""
    inside = ((x >= batch.lower) & (x <= batch.upper)).flatten(1).all(1)
    y = oracle(x) if oracle is not None else net(x.to(net.dtype))
    return inside & (batch.property_margin(y.to(batch.C)) <= 0)


def output_diversified_start(net: Network, lower: Tensor, upper: Tensor, generator: torch.Generator,
                             steps: int = 2, step_size: float = 0.5) -> Tensor:
    """A start in the box [lower, upper] (N, *in) spread over the output space rather than the input space.

    From a uniform random point, ``steps`` PGD steps (of ``step_size`` times
    the box width, the best point kept) maximise ``w . f(x)`` for a random direction w in
    [-1, 1]^n_out per sample (output-diversified initialisation, ODI).
    """
    x = lower + (upper - lower) * torch.rand(lower.shape, generator=generator, device=lower.device, dtype=lower.dtype)
    w = torch.rand((len(lower), *net.output_shape), generator=generator, device=lower.device, dtype=lower.dtype)
    w = 2 * w - 1
    x, _ = pgd_maximize(lambda z: (net(z) * w).flatten(1).sum(1), lower, upper, steps=steps, step_size=step_size,
                        x0=x, decay=())
    return x


def pgd_attack(net: Network, batch: PropertyBatch, oracle: Oracle | None = None, steps: int = 40,
               restarts: int = 5, seed: int = 0, deadline: float = math.inf) -> tuple[Tensor, Tensor]:
    """Search counterexamples for a batch of properties, stopping early at ``deadline`` (time.monotonic()).

    Returns (found (N,) bool, x (N, *in)): where found, x is a counterexample
    confirmed by the oracle (or the IR when no oracle is given).
    """
    generator = torch.Generator(device=batch.lower.device).manual_seed(seed)
    center = (batch.lower + batch.upper) / 2

    def loss(x: Tensor) -> Tensor:
        return -batch.property_margin(net(x))

    with torch.no_grad():
        x, _ = pgd_maximize(loss, batch.lower, batch.upper, steps=steps, step_size=0.1, restarts=restarts,
                            x0=center, generator=generator,
                            stop=lambda best: (best >= 0) | (time.monotonic() > deadline),
                            init=lambda: output_diversified_start(net, batch.lower, batch.upper, generator))
        return confirmed(batch, x, oracle, net), x
