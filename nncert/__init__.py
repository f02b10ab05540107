"""nncert's Python API: bound and certify networks, and train them certifiably (see README.md, "Python API").

- Bounds: :func:`bounds` of a model's outputs (or of linear specifications ``C y``) on input boxes,
  with :func:`linf_ball` for L-inf balls and :func:`robustness_matrix` for robustness margins.
- Certification: :func:`certify` (samples at radius eps) and :func:`certify_vnnlib` run the ``certify``
  command's pipeline and return its result records; :func:`format_table` prints their summary.
- Certified training: :func:`ibp_loss`, :func:`sabr_loss` and SABR's region selection :func:`sabr_region`.

The packages ``nncert.domains``, ``nncert.verifier``, ``nncert.training`` and ``nncert.cli`` hold the rest.
The names below load on first use, so that the commands (``nncert.cli``) set up the OpenMP runtime before
anything imports torch.
"""

import importlib
from pathlib import Path

# In a source checkout the subpackages are the folders beside this one (an installation maps them here), so the
# repository's root also works without installing
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "domains" / "__init__.py").is_file():
    __path__.append(str(_checkout))

# public name -> (module, name in it)
_EXPORTS = {
    "Normalize": ("nncert.domains.from_torch", "Normalize"),
    "Residual": ("nncert.domains.from_torch", "Residual"),
    "from_torch": ("nncert.domains.from_torch", "network_from_torch"),
    "MNBaBConfig": ("nncert.domains.mnbab", "MNBaBConfig"),
    "ibp_loss": ("nncert.training.methods", "ibp_loss"),
    "sabr_loss": ("nncert.training.methods", "sabr_loss"),
    "linf_box": ("nncert.training.regions", "linf_box"),
    "sabr_region": ("nncert.training.regions", "sabr_region"),
    **{name: ("nncert.verifier.api", name) for name in
       ("as_model", "bounds", "certify", "certify_vnnlib", "linf_ball", "robustness_matrix")},
    "load_onnx": ("nncert.verifier.onnx_import", "load_onnx"),
    "DOMAINS": ("nncert.verifier.registry", "DOMAINS"),
    "Options": ("nncert.verifier.registry", "Options"),
    "format_table": ("nncert.verifier.results", "format_table"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nncert' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
