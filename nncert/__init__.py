"""nncert's Python API: bound and certify networks, and train them certifiably (see README.md, "Python API").

- Bounds: :func:`bounds` of a model's outputs (or of linear specifications ``C y``) on input boxes,
  with :func:`linf_ball` for L-inf balls and :func:`robustness_matrix` for robustness margins.
- Certification: :func:`certify` (samples at radius eps) and :func:`certify_vnnlib` run the ``certify``
  command's pipeline and return its result records; :func:`format_table` prints their summary.
- Certified training: :func:`ibp_loss`, :func:`sabr_loss` and SABR's region selection :func:`sabr_region`.
"""

from domains.from_torch import Normalize, Residual
from domains.from_torch import network_from_torch as from_torch
from domains.mnbab import MNBaBConfig
from training.methods import ibp_loss, sabr_loss
from training.regions import linf_box, sabr_region
from verifier.api import as_model, bounds, certify, certify_vnnlib, linf_ball, robustness_matrix
from verifier.onnx_import import load_onnx
from verifier.registry import DOMAINS, Options
from verifier.results import format_table

__all__ = [
    "DOMAINS", "MNBaBConfig", "Normalize", "Options", "Residual", "as_model", "bounds", "certify", "certify_vnnlib",
    "format_table", "from_torch", "ibp_loss", "linf_ball", "linf_box", "load_onnx", "robustness_matrix",
    "sabr_loss", "sabr_region",
]
