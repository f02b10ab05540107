"""Per-batch epsilon schedule (Shi et al. 2021) and the per-epoch learning-rate steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def smooth_ramp(progress: float, beta: float = 4.0, mid: float = 0.25) -> float:
    """Fraction of the target epsilon after ``progress`` in [0, 1] of the ramp.

    Polynomial start ``a s^beta`` up to ``s = mid``, then its tangent line, which
    reaches 1 at ``s = 1``: ``a (mid^beta + beta mid^(beta-1) (1 - mid)) = 1``.
    """
    s = min(max(progress, 0.0), 1.0)
    a = 1.0 / (mid ** beta + beta * mid ** (beta - 1) * (1 - mid))
    if s < mid:
        return a * s ** beta
    return min(1.0, a * mid ** beta + a * beta * mid ** (beta - 1) * (s - mid))


@dataclass(frozen=True)
class EpsSchedule:
    """Epsilon of every training step (batch): 0 during the natural warm-up, then the smooth ramp.

    The ramp's last step uses the full epsilon, and so does every step after it.
    """

    eps: float
    warmup_steps: int
    ramp_steps: int

    @classmethod
    def from_epochs(cls, eps: float, warmup_epochs: int, ramp_epochs: int, steps_per_epoch: int) -> EpsSchedule:
        return cls(eps, warmup_epochs * steps_per_epoch, ramp_epochs * steps_per_epoch)

    def natural(self, step: int) -> bool:
        """Whether ``step`` belongs to the natural (clean-loss) warm-up."""
        return step < self.warmup_steps

    def __call__(self, step: int) -> float:
        if self.natural(step):
            return 0.0
        if self.ramp_steps == 0:
            return self.eps
        return self.eps * smooth_ramp((step + 1 - self.warmup_steps) / self.ramp_steps)


def lr_scheduler(optimizer: torch.optim.Optimizer, milestones: tuple[int, ...],
                 decay: float) -> torch.optim.lr_scheduler.MultiStepLR:
    """Multiply the learning rate by ``decay`` at each milestone epoch (stepped once per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), decay)
