"""Where the development data and benchmarks live, for tests.

``$NNCERT_DATA`` / ``$NNCERT_BENCHMARKS`` win; otherwise the workplace's shared
folder beside the repository (``../shared``), or ``/work/shared`` for clones
made elsewhere (CI clones into a temporary folder). Tests that need a missing
folder skip with a message saying which variable to set.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path | None:
    for candidate in (REPO.parent / "shared", Path("/work/shared")):
        if candidate.is_dir():
            return candidate
    return None


def data_dir() -> Path | None:
    """The folder with MNIST/ (torchvision layout), cifar10/ and eran/, if present."""
    env = os.environ.get("NNCERT_DATA")
    if env:
        return Path(env)
    shared = _shared()
    return shared / "data" if shared and (shared / "data").is_dir() else None


def vnncomp_dir() -> Path | None:
    """The folder with the VNN-COMP benchmarks (2022_mnist_fc, acasxu, 2022_oval21), if present."""
    env = os.environ.get("NNCERT_BENCHMARKS")
    if env:
        return Path(env) / "vnncomp"
    shared = _shared()
    return shared / "benchmarks" / "vnncomp" if shared and (shared / "benchmarks" / "vnncomp").is_dir() else None
