"""Regularisers: the warm-up terms of Shi et al. 2021 and L1.

During the epsilon ramp, Shi et al. add to the loss, for the pre-activation
bounds [l, u] (centre c, radius r) of every ReLU layer, with tolerance tol:

- tightness: ReLU(tol - mean(r_0) / mean(r)) / tol, where r_0 is the radius of
  the (normalised) input, so interval widths do not blow up with depth;
- ReLU balance: ReLU(tol - min(rho, 1/rho)) / tol + ReLU(tol - min(nu, 1/nu)) / tol,
  where rho = mean(c 1[l > 0]) / -mean(c 1[u < 0]) compares the mean centres of
  active and inactive neurons and nu = sum((c - mean c)^2 1[l > 0]) / sum((c - mean c)^2 1[u < 0])
  their spread, so neither kind of stable neuron dominates.

Both are averaged over the ReLU layers; layers where a ratio is undefined (no
active or no inactive neuron) contribute no balance term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nncert.domains.box import Bounds
from nncert.domains.network import Conv2d, Linear, Network, ReLU


def warmup_regularizer(net: Network, bounds: list[Bounds], tol: float) -> Tensor:
    """(tightness + ReLU balance) averaged over ReLU layers; ``bounds`` from domains.box.propagate."""
    pre_activations = [bounds[node.inputs[0]] for node in net.nodes if isinstance(node.op, ReLU)]
    input_radius = _radius(bounds[_first_layer_input(net)]).mean()
    terms = [_tightness(input_radius, lo, hi, tol) + _relu_balance(lo, hi, tol) for lo, hi in pre_activations]
    return torch.stack(terms).mean()


def _first_layer_input(net: Network) -> int:
    """The node feeding the first Linear / Conv2d: the normalised input."""
    return next(node.inputs[0] for node in net.nodes if isinstance(node.op, Linear | Conv2d))


def _radius(bounds: Bounds) -> Tensor:
    lower, upper = bounds
    return (upper - lower) / 2


def _tightness(input_radius: Tensor, lower: Tensor, upper: Tensor, tol: float) -> Tensor:
    ratio = input_radius / _radius((lower, upper)).mean().clamp(min=1e-12)
    return F.relu(tol - ratio) / tol


def _relu_balance(lower: Tensor, upper: Tensor, tol: float) -> Tensor:
    centre = (upper + lower) / 2
    active, inactive = (lower > 0).float(), (upper < 0).float()
    deviation = (centre - centre.mean()) ** 2
    mean_ratio = (centre * active).mean() / -(centre * inactive).mean()
    var_ratio = (deviation * active).sum() / (deviation * inactive).sum()
    term = sum(F.relu(tol - torch.minimum(r, 1 / r.clamp(min=1e-12))) / tol for r in (mean_ratio, var_ratio))
    return term if bool(torch.isfinite(term)) else term.new_zeros(())


def l1_penalty(model: nn.Module) -> Tensor:
    """Sum of |p| over all parameters."""
    return sum(p.abs().sum() for p in model.parameters())
