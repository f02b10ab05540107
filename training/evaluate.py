"""Natural, PGD and Box-certified accuracy of a model at epsilon (model in eval mode)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm import tqdm

from nncert.domains.from_torch import network_from_torch
from nncert.training.adversarial import attack, margin_objective
from nncert.training.datasets import Dataset
from nncert.training.losses import margin_lower_bounds
from nncert.training.regions import linf_box


def evaluate(model: nn.Module, data: Dataset, eps: float, batch_size: int, pgd_steps: int, pgd_restarts: int,
             seed: int, device: torch.device | str = "cpu", progress: str | None = None) -> dict[str, float]:
    """Fractions of ``data`` that are correct (natural), survive PGD (pgd) and are Box-certified (box).

    PGD maximises the margin max_{i != y} z_i - z_y from random starts drawn
    from a generator seeded with ``seed``, so the numbers are reproducible.
    With ``progress`` (a label), a progress bar over the images is shown on stderr.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device).manual_seed(seed)
    counts = torch.zeros(3, dtype=torch.long)
    bar = tqdm(total=len(data), desc=progress, unit="img", leave=False, disable=progress is None)
    try:
        for start in range(0, len(data), batch_size):
            x, y = (t[start:start + batch_size].to(device) for t in (data.x, data.y))
            counts += _batch_counts(model, x, y, eps, pgd_steps, pgd_restarts, generator)
            bar.update(len(y))
    finally:
        bar.close()
        model.train(was_training)
    natural, pgd, box = (count / len(data) for count in counts.tolist())
    return {"natural": natural, "pgd": pgd, "box": box}


def _batch_counts(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, restarts: int,
                  generator: torch.Generator) -> Tensor:
    """Numbers of (correct, PGD-robust, Box-certified) samples of the batch (3,)."""
    lower, upper = linf_box(x, eps)
    x_adv = attack(model, x, y, lower, upper, steps, margin_objective, restarts, generator,
                   stop=lambda margin: margin > 0)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        robust = correct & (model(x_adv).argmax(1) == y)
        net = network_from_torch(model, tuple(x.shape[1:]))
        margins = margin_lower_bounds(net, lower, upper, y)
        certified = (margins > 0).sum(1) == margins.shape[1] - 1  # every i != y; the y entry is 0
    return torch.stack([correct.sum(), robust.sum(), certified.sum()]).cpu()
