"""The training objective of one batch for each method: std, pgd, ibp, sabr and mtl-ibp.

- std: cross-entropy of the clean batch.
- abscert: the same; its model starts with the abstraction of the input to bin
  edges (training/abscert.py), so this is AbsCert's loss on the clean bins.
- pgd: cross-entropy at PGD points of B(x, eps) (adversarial training, Madry et al.).
- ibp / sabr: the Box cross-entropy over the propagation region (the whole ball for
  IBP, SABR's small box otherwise), plus Shi et al.'s warm-up regularisers while
  epsilon ramps up. BatchNorm layers use the clean batch's statistics in the
  propagation (record_batch_stats), as in the reference implementation.
- mtl-ibp (De Palma et al., ICLR 2024, "Expressive Losses for Verified Robustness
  via Convex Combinations"): the convex combination (1 - alpha) L_adv + alpha L_IBP
  of pgd's adversarial loss and ibp's Box loss (with its warm-up regularisers);
  alpha = 0 is adversarial training, alpha = 1 is IBP.

During the natural warm-up every method uses the clean loss. L1 is added by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from nncert.domains.box import propagate
from nncert.domains.from_torch import network_from_torch, record_batch_stats
from nncert.training.adversarial import attack, cross_entropy_objective
from nncert.training.distributed import sync_batch_stats
from nncert.training.losses import box_cross_entropy, margin_lower_bounds
from nncert.training.regions import linf_box, sabr_region
from nncert.training.regularizers import warmup_regularizer


@dataclass(frozen=True)
class BatchSetting:
    """What the schedule prescribes for one batch."""

    eps: float
    natural: bool  # warm-up: clean loss only
    reg_weight: float  # weight of the warm-up regularisers


def method_loss(method: str, model: nn.Module, x: Tensor, y: Tensor, setting: BatchSetting, lam: float,
                pgd_steps: int, reg_tol: float, *, mtl_alpha: float) -> dict[str, Tensor]:
    """Loss terms {"ce": ..., "reg": ...} of ``method`` on the batch x (N, C, H, W), y (N,)."""
    if setting.natural or method in ("std", "abscert"):
        return {"ce": F.cross_entropy(model(x), y)}
    if method == "pgd":
        return {"ce": adversarial_loss(model, x, y, setting.eps, pgd_steps)}
    if method == "mtl-ibp":
        return mtl_ibp_loss(model, x, y, setting, mtl_alpha, pgd_steps, reg_tol)
    return certified_loss(model, x, y, setting, 1.0 if method == "ibp" else lam, pgd_steps, reg_tol)


def adversarial_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float, pgd_steps: int) -> Tensor:
    """Cross-entropy at the PGD point (CE objective, model in eval mode) of B(x, eps)."""
    x_adv = attack(model, x, y, *linf_box(x, eps), pgd_steps, cross_entropy_objective)
    return F.cross_entropy(model(x_adv), y)


def mtl_ibp_loss(model: nn.Module, x: Tensor, y: Tensor, setting: BatchSetting, alpha: float, pgd_steps: int,
                 reg_tol: float) -> dict[str, Tensor]:
    """(1 - alpha) CE at a PGD point + alpha Box CE over the whole ball, plus the warm-up regularisers."""
    adversarial = adversarial_loss(model, x, y, setting.eps, pgd_steps)
    terms = certified_loss(model, x, y, setting, 1.0, pgd_steps, reg_tol)
    terms["ce"] = (1 - alpha) * adversarial + alpha * terms["ce"]
    return terms


def certified_loss(model: nn.Module, x: Tensor, y: Tensor, setting: BatchSetting, lam: float, pgd_steps: int,
                   reg_tol: float) -> dict[str, Tensor]:
    """Box CE over SABR's region (lam < 1) or the whole ball (lam = 1), plus the warm-up regularisers."""
    with record_batch_stats(model) as batch_stats:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model(x)  # clean batch: BatchNorm statistics for the propagation
    lower, upper = sabr_region(model, x, y, setting.eps, lam, pgd_steps)
    net = network_from_torch(model, tuple(x.shape[1:]), sync_batch_stats(batch_stats))
    bounds = propagate(net, lower, upper)
    terms = {"ce": box_cross_entropy(margin_lower_bounds(net, lower, upper, y, bounds), y)}
    if setting.reg_weight > 0:
        terms["reg"] = setting.reg_weight * warmup_regularizer(net, bounds, reg_tol)
    return terms


def ibp_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """IBP's loss: the Box cross-entropy over B(x, eps) clipped to [0, 1]; x (N, C, H, W), y (N,)."""
    return sabr_loss(model, x, y, eps, lam=1.0)


def sabr_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float, lam: float = 0.4, pgd_steps: int = 8) -> Tensor:
    """SABR's loss: the Box cross-entropy over the box of radius lam * eps that ``sabr_region`` selects."""
    return certified_loss(model, x, y, BatchSetting(eps, natural=False, reg_weight=0.0), lam, pgd_steps,
                          reg_tol=0.0)["ce"]
