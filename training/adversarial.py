"""PGD against a torch model, through the project's one PGD (domains.pgd), with BatchNorm in eval mode.

The attack differentiates with respect to the input only (no parameter gradient is computed), and
strided convolutions of few channels, e.g. an image model's first layer, give their input's gradient in
the faster sub-pixel form (training/subpixel.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nncert.domains.pgd import pgd_maximize
from nncert.training.subpixel import SubpixelInputGradients

# objective(logits (N, K), labels (N,)) -> (N,), maximised by the attack
Objective = Callable[[Tensor, Tensor], Tensor]


def cross_entropy_objective(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def margin_objective(logits: Tensor, y: Tensor) -> Tensor:
    """max_{i != y} z_i - z_y: positive exactly when the point is misclassified."""
    others = logits.scatter(1, y[:, None], -torch.inf)
    return others.amax(1) - logits.gather(1, y[:, None]).squeeze(1)


def attack(model: nn.Module, x: Tensor, y: Tensor, lower: Tensor, upper: Tensor, steps: int,
           objective: Objective, restarts: int = 1, generator: torch.Generator | None = None,
           stop: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The best point of [lower, upper] (N, C, H, W) found by PGD from random starts.

    The model runs in eval mode (BatchNorm with running statistics) during the
    attack and gets its previous mode back afterwards. ``stop(best objective)``
    (N,) -> bool ends the search early once it holds for every sample.
    """
    was_training = model.training
    model.eval()
    try:
        with SubpixelInputGradients():
            point, _ = pgd_maximize(lambda z: objective(model(z), y), lower, upper, steps=steps, restarts=restarts,
                                    generator=generator, stop=stop)
    finally:
        model.train(was_training)
    return point
